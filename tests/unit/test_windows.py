"""Calling windows: the time math that keeps Switchboard from calling anyone at night.

Property tests compare `next_allowed` with a slow oracle that restates the definition
and scans time point by point; example tests pin the DST cases and the API's edges.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dispatcher import windows
from dispatcher.windows import (
    DAY_NAMES,
    CallingWindow,
    NoAllowedInstant,
    is_allowed,
    next_allowed,
    zones_for,
)

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
MICRO = dt.timedelta(microseconds=1)
ALL_DAYS = list(DAY_NAMES)
NY = ZoneInfo("America/New_York")
LA = ZoneInfo("America/Los_Angeles")

# Real zones with the awkward cases: 30- and 45-minute offsets, a 30-minute DST shift
# (Lord_Howe), DST changes at local midnight (Santiago, Havana, Beirut, Sao_Paulo until
# 2019), Ramadan switches (Casablanca), a skipped day (Apia, 2011), no DST at all.
ZONE_NAMES = (
    "UTC",
    "America/New_York",
    "America/Los_Angeles",
    "America/Chicago",
    "America/Phoenix",
    "America/St_Johns",
    "America/Sao_Paulo",
    "America/Santiago",
    "America/Havana",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Moscow",
    "Africa/Casablanca",
    "Asia/Beirut",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Apia",
)
# Pairs a few hours apart whose DST rules differ, so that a short window overlaps in both
# on one side of an offset change only.
NEIGHBOURS = (
    ("Europe/London", "UTC"),
    ("Europe/London", "Africa/Casablanca"),
    ("Europe/Berlin", "Europe/Moscow"),
    ("Europe/Berlin", "Asia/Beirut"),
    ("America/New_York", "America/Phoenix"),
    ("America/New_York", "America/Sao_Paulo"),
    ("America/New_York", "America/Santiago"),
    ("America/Havana", "America/Chicago"),
    ("America/St_Johns", "America/Sao_Paulo"),
    ("Australia/Sydney", "Australia/Lord_Howe"),
    ("Australia/Sydney", "Asia/Tokyo"),
    ("Pacific/Chatham", "Pacific/Apia"),
    ("Asia/Kathmandu", "Europe/Moscow"),
)
FIRST = dt.datetime(2008, 1, 1, tzinfo=UTC)
LAST = dt.datetime(2031, 1, 1, tzinfo=UTC)

PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(UTC)


def window(
    start: str, end: str, days: Sequence[str] = ALL_DAYS, restricted: Sequence[str] = ()
) -> CallingWindow:
    built = CallingWindow.from_json(
        {"start": start, "end": end, "days": list(days), "restricted_dates": list(restricted)}
    )
    assert built is not None
    return built


# --- the oracle -------------------------------------------------------------------------


def _allowed_here(w: CallingWindow, local: dt.datetime) -> bool:
    """The definition, restated: the wall clock a zone shows, nothing else."""
    return (
        w.start <= local.time() < w.end
        and local.weekday() in w.days
        and local.date() not in w.restricted_dates
    )


def _first_change(zone: ZoneInfo, a: dt.datetime, b: dt.datetime) -> dt.datetime:
    """The first whole second in (a, b] at which `zone` shows another offset than at `a`
    (zoneinfo changes offsets on whole seconds). Assumes one change in (a, b]."""
    offset = a.astimezone(zone).utcoffset()
    lo = a.replace(microsecond=0)  # same second as `a`, so the same offset
    hi = b.replace(microsecond=0)  # likewise for `b`
    while hi - lo > dt.timedelta(seconds=1):
        mid = lo + dt.timedelta(seconds=int((hi - lo).total_seconds()) // 2)
        if mid.astimezone(zone).utcoffset() == offset:
            lo = mid
        else:
            hi = mid
    return hi


def offset_changes(zone: ZoneInfo, since: dt.datetime, until: dt.datetime) -> list[dt.datetime]:
    """Every instant in (since, until] at which `zone` changes its offset: offsets compared
    hour by hour, then bisected (no zone changes its offset twice within an hour)."""
    found = []
    at, offset = since, since.astimezone(zone).utcoffset()
    while at < until:
        following = min(at + dt.timedelta(hours=1), until)
        now = following.astimezone(zone).utcoffset()
        if now != offset:
            found.append(_first_change(zone, at, following))
        at, offset = following, now
    return found


def first_allowed_by_scan(
    w: CallingWindow,
    zones: Sequence[ZoneInfo],
    since: dt.datetime,
    until: dt.datetime,
    step_minutes: int = 1,
) -> dt.datetime | None:
    """Slow, obviously correct: the first allowed instant in [since, until), or None.

    Where can an allowed stretch begin? Each zone's wall clock runs with the UTC clock
    between its offset changes, so a zone becomes allowed only where its wall time reaches
    `start` (UTC = local date + start - offset: on the step grid when start and every
    offset shown are multiples of the step, which is asserted) or where its offset
    changes. So it is enough to check `since`, every grid point and every offset change.
    """
    step = dt.timedelta(minutes=step_minutes)
    start_minute = w.start.hour * 60 + w.start.minute
    assert start_minute % step_minutes == 0 and w.start.second == w.start.microsecond == 0

    def allowed(at: dt.datetime) -> bool:
        return all(_allowed_here(w, at.astimezone(z)) for z in zones)

    changes = sorted(c for z in zones for c in offset_changes(z, since, until))
    for at in [since, *changes]:  # every offset any zone shows in [since, until)
        for z in zones:
            offset = at.astimezone(z).utcoffset()
            assert offset is not None and offset % step == dt.timedelta(0), (z, at, offset)

    if allowed(since):
        return since
    step_s = step_minutes * 60
    seconds = (since - EPOCH) // dt.timedelta(seconds=1)
    at = EPOCH + dt.timedelta(seconds=(seconds // step_s + 1) * step_s)  # first point > since
    pending = iter(changes)
    change = next(pending, None)
    while at < until:
        while change is not None and change <= at:
            if change < until and allowed(change):
                return change
            change = next(pending, None)
        if allowed(at):
            return at
        at += step
    while change is not None:  # changes after the last grid point
        if change < until and allowed(change):
            return change
        change = next(pending, None)
    return None


@functools.cache
def transitions(name: str) -> tuple[dt.datetime, ...]:
    """The zone's offset changes between FIRST and LAST (days compared, then bisected), to
    place test instants next to them."""
    zone = ZoneInfo(name)
    found = []
    day = FIRST
    offset = day.astimezone(zone).utcoffset()
    while day < LAST:
        following = day + dt.timedelta(days=1)
        now = following.astimezone(zone).utcoffset()
        if now != offset:
            found.append(_first_change(zone, day, following))
        day, offset = following, now
    return tuple(found)


# --- strategies -------------------------------------------------------------------------

zone_names = st.sampled_from(ZONE_NAMES)
zone_sets = st.one_of(
    zone_names.map(lambda name: (ZoneInfo(name),)),
    st.lists(zone_names, min_size=2, max_size=2, unique=True).map(
        lambda names: tuple(ZoneInfo(n) for n in names)
    ),
    st.lists(zone_names, min_size=1, max_size=3, unique=True).map(
        lambda names: tuple(ZoneInfo(n) for n in names)
    ),
)
# Minutes of the day, biased towards the small hours where clocks change.
minutes = st.one_of(
    st.sampled_from([0, 30, 59, 60, 90, 120, 135, 150, 165, 180, 210, 540, 1260, 1380, 1439]),
    st.integers(0, 1439),
)
jitter = st.one_of(st.sampled_from([0, 1, -1, 999_999]), st.integers(-60_000_000, 60_000_000)).map(
    lambda us: dt.timedelta(microseconds=us)
)


@st.composite
def instants(draw: st.DrawFn, zones: Sequence[ZoneInfo]) -> tuple[dt.datetime, list[int]]:
    """An instant: half the time within 3 h of one of the zones' offset changes, else
    anywhere in 2008-2030. With it, the minutes of the day a change shows on its wall
    clock either side of it (none when not near one), for windows that start or end in a
    gap or a repeated hour."""
    zone = draw(st.sampled_from(zones))
    changes = transitions(zone.key)
    if changes and draw(st.booleans()):
        change = draw(st.sampled_from(changes))
        shift = dt.timedelta(minutes=draw(st.integers(-180, 180)))
        walls = [at.astimezone(zone) for at in (change - MICRO, change)]
        pivots = [wall.hour * 60 + wall.minute for wall in walls]
        return change + shift + draw(jitter), pivots
    naive = draw(
        st.datetimes(min_value=FIRST.replace(tzinfo=None), max_value=dt.datetime(2030, 12, 1))
    )
    # On a whole minute (and so often exactly on a boundary) give or take a jitter.
    return naive.replace(second=0, microsecond=0, tzinfo=UTC) + draw(jitter), []


@st.composite
def calling_windows(
    draw: st.DrawFn,
    near: dt.date,
    grid: int = 1,
    lengths: tuple[int, int] | None = None,
    pivots: Sequence[int] = (),
) -> CallingWindow:
    """Any same-day window, or (half the time) a long one so that zones hours apart still
    overlap often, or one whose length in minutes is within `lengths`; start and end on
    multiples of `grid` minutes, often close to `pivots` (minutes of the day)."""
    close = sorted(
        {p + d for p in pivots for d in (-30, -15, -1, 0, 1, 15, 30) if 0 <= p + d <= 1439}
    )
    anywhere = st.one_of(st.sampled_from(close), minutes) if close else minutes
    on_grid = anywhere.map(lambda m: m // grid * grid)
    if lengths is not None:
        length = draw(st.integers(*lengths).map(lambda m: max(m // grid * grid, grid)))
        start = draw(on_grid.filter(lambda m: m + length <= 1439))
        end = start + length
    elif draw(st.booleans()):
        start = draw(on_grid.filter(lambda m: m <= 720))
        end = draw(on_grid.filter(lambda m: m >= 1200))
    else:
        a, b = draw(st.lists(on_grid, min_size=2, max_size=2, unique=True))
        start, end = min(a, b), max(a, b)
    days = draw(
        st.one_of(st.just(frozenset(range(7))), st.frozensets(st.integers(0, 6), min_size=1))
    )
    restricted = draw(
        st.frozensets(st.integers(-2, 12).map(lambda k: near + dt.timedelta(days=k)), max_size=3)
    )
    return CallingWindow(
        start=dt.time(start // 60, start % 60),
        end=dt.time(end // 60, end % 60),
        days=days,
        restricted_dates=restricted,
    )


# --- properties -------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(st.data())
def test_next_allowed_is_the_earliest_allowed_instant(data: st.DataObject) -> None:
    zones = data.draw(zone_sets, label="zones")
    instant, pivots = data.draw(instants(zones), label="instant")
    w = data.draw(calling_windows(instant.date(), pivots=pivots), label="window")
    shown_in = data.draw(zone_names, label="instant shown in")
    horizon = 12

    try:
        found = next_allowed(w, zones, instant.astimezone(ZoneInfo(shown_in)), horizon_days=horizon)
    except NoAllowedInstant:
        until = instant + dt.timedelta(days=horizon) + MICRO
        assert first_allowed_by_scan(w, zones, instant, until) is None
        return

    assert found.utcoffset() == dt.timedelta(0)
    assert found >= instant
    assert first_allowed_by_scan(w, zones, instant, found + MICRO) == found
    assert is_allowed(w, zones, found)
    assert next_allowed(w, zones, found) == found
    assert next_allowed(w, tuple(reversed(zones)), instant, horizon_days=horizon) == found


@PROPERTY_SETTINGS
@given(st.data())
def test_is_allowed_follows_the_wall_clock_in_every_zone(data: st.DataObject) -> None:
    zones = data.draw(zone_sets, label="zones")
    instant, pivots = data.draw(instants(zones), label="instant")
    w = data.draw(calling_windows(instant.date(), pivots=pivots), label="window")
    expected = all(_allowed_here(w, instant.astimezone(z)) for z in zones)
    assert is_allowed(w, zones, instant) is expected
    if expected:
        assert next_allowed(w, zones, instant) == instant


def _difference(zones: Sequence[ZoneInfo], at: dt.datetime) -> int:
    """Minutes between the two zones' offsets at `at`."""
    first, second = (at.astimezone(z).utcoffset() for z in zones)
    assert first is not None and second is not None
    return (first - second) // dt.timedelta(minutes=1)


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(st.data())
def test_next_allowed_across_weeks_with_nothing_allowed(data: st.DataObject) -> None:
    """Zones whose windows only overlap on one side of an offset change: the sweep may go
    through weeks with nothing allowed (and jump over them). Quarter-hour windows keep
    the oracle's scan cheap (every zone here has quarter-hour offsets, and it checks)."""
    pairs = st.one_of(
        st.sampled_from(NEIGHBOURS), st.lists(zone_names, min_size=2, max_size=2, unique=True)
    )
    zones = data.draw(pairs.map(lambda names: tuple(ZoneInfo(n) for n in names)), label="zones")
    # Nine days to three weeks and a half before an offset change of either zone.
    changes = sorted(c for z in zones for c in transitions(z.key))
    assume(changes)
    change = data.draw(st.sampled_from(changes), label="change")
    early = data.draw(st.integers(9 * 1440, 24 * 1440), label="minutes before")
    instant = change - dt.timedelta(minutes=early) + data.draw(jitter, label="jitter")
    # Windows short enough that the zones' overlap depends on their offsets; when the
    # change brings the zones closer, one that overlaps only after the change.
    apart = [abs(_difference(zones, at)) for at in (change - MICRO, change)]
    lengths = (apart[1] + 15, apart[0]) if apart[1] < apart[0] else (15, 240)
    w = data.draw(calling_windows(instant.date(), grid=15, lengths=lengths), label="window")
    horizon = 45

    try:
        found = next_allowed(w, zones, instant, horizon_days=horizon)
    except NoAllowedInstant:
        until = instant + dt.timedelta(days=horizon) + MICRO
        assert first_allowed_by_scan(w, zones, instant, until, step_minutes=15) is None
        return
    assert first_allowed_by_scan(w, zones, instant, found + MICRO, step_minutes=15) == found


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(st.data())
def test_restricted_dates_that_empty_a_week_are_not_skipped_over(data: st.DataObject) -> None:
    """One or two calling days a week, and restricted dates on the next of them: weeks
    with nothing allowed that are not a reason to jump to the next offset change."""
    zones = data.draw(zone_sets, label="zones")
    instant, pivots = data.draw(instants(zones), label="instant")
    w = data.draw(calling_windows(instant.date(), grid=15, pivots=pivots), label="window")
    days = data.draw(st.frozensets(st.integers(0, 6), min_size=1, max_size=2), label="days")
    local = instant.astimezone(zones[0]).date()
    calling_days = [
        local + dt.timedelta(days=k) for k in range(-1, 16) if (local.weekday() + k) % 7 in days
    ]
    restricted = data.draw(
        st.lists(st.sampled_from(calling_days), min_size=1, max_size=3), label="restricted"
    )
    w = CallingWindow(w.start, w.end, days, frozenset(restricted))
    horizon = 30

    try:
        found = next_allowed(w, zones, instant, horizon_days=horizon)
    except NoAllowedInstant:
        until = instant + dt.timedelta(days=horizon) + MICRO
        assert first_allowed_by_scan(w, zones, instant, until, step_minutes=15) is None
        return
    assert first_allowed_by_scan(w, zones, instant, found + MICRO, step_minutes=15) == found


# --- DST, by example ----------------------------------------------------------------------


def test_window_opening_in_the_spring_forward_gap_opens_when_clocks_jump() -> None:
    # New York, 2026-03-08: 02:00 EST becomes 03:00 EDT at 07:00 UTC; 02:30 never happens.
    w = window("02:30", "21:00")
    assert next_allowed(w, [NY], utc("2026-03-08T05:00Z")) == utc("2026-03-08T07:00Z")
    assert next_allowed(w, [NY], utc("2026-03-08T06:59:59.999999Z")) == utc("2026-03-08T07:00Z")
    assert not is_allowed(w, [NY], utc("2026-03-08T06:59:59.999999Z"))


def test_window_ending_in_the_spring_forward_gap_closes_at_the_gap() -> None:
    w = window("01:00", "02:30")
    assert is_allowed(w, [NY], utc("2026-03-08T06:59:59.999999Z"))  # 01:59:59.999999 EST
    assert not is_allowed(w, [NY], utc("2026-03-08T07:00Z"))  # 03:00 EDT
    assert next_allowed(w, [NY], utc("2026-03-08T07:00Z")) == utc("2026-03-09T05:00Z")


def test_fall_back_opens_at_the_first_occurrence() -> None:
    # New York, 2026-11-01: 02:00 EDT becomes 01:00 EST at 06:00 UTC; 01:xx happens twice.
    w = window("01:30", "21:00")
    assert next_allowed(w, [NY], utc("2026-11-01T04:00Z")) == utc("2026-11-01T05:30Z")


def test_second_occurrence_of_the_repeated_hour_is_judged_by_its_wall_time() -> None:
    w = window("01:00", "01:30")
    assert is_allowed(w, [NY], utc("2026-11-01T05:15Z"))  # 01:15 EDT
    assert not is_allowed(w, [NY], utc("2026-11-01T05:45Z"))  # 01:45 EDT
    # Closed at 01:30 EDT, open again when the clocks show 01:00 (EST) a second time.
    assert next_allowed(w, [NY], utc("2026-11-01T05:30Z")) == utc("2026-11-01T06:00Z")
    assert is_allowed(w, [NY], utc("2026-11-01T06:29:59Z"))  # 01:29:59 EST


def test_thirty_minute_dst_shift() -> None:
    # Lord Howe, 2026-10-04: 02:00 (+10:30) becomes 02:30 (+11:00) at 15:30 UTC.
    w = window("02:15", "05:00")
    assert next_allowed(w, [ZoneInfo("Australia/Lord_Howe")], utc("2026-10-03T12:00Z")) == utc(
        "2026-10-03T15:30Z"
    )


# --- the rest, by example -----------------------------------------------------------------


def test_night_waits_for_the_morning() -> None:
    w = window("09:00", "21:00")
    assert next_allowed(w, [NY], utc("2026-06-11T03:00Z")) == utc("2026-06-11T13:00Z")
    assert next_allowed(w, [NY], utc("2026-06-11T01:00Z")) == utc("2026-06-11T13:00Z")  # 21:00


def test_allowed_instant_is_its_own_answer_in_utc() -> None:
    w = window("09:00", "21:00")
    at = dt.datetime(2026, 6, 10, 20, 59, 59, 999_999, tzinfo=NY)
    assert next_allowed(w, [NY], at) == at
    assert next_allowed(w, [NY], at).tzinfo is UTC


def test_friday_evening_waits_for_monday() -> None:
    w = window("09:00", "21:00", ["mon", "tue", "wed", "thu", "fri"])
    # Friday 2026-06-12, 21:00 EDT.
    assert next_allowed(w, [NY], utc("2026-06-13T01:00Z")) == utc("2026-06-15T13:00Z")


def test_restricted_date_is_skipped() -> None:
    w = window("09:00", "21:00", ["mon", "tue", "wed", "thu", "fri"], ["2026-12-25"])
    # Thursday 2026-12-24, 22:00 EST: Friday is Christmas, so Monday 09:00 EST.
    assert next_allowed(w, [NY], utc("2026-12-25T03:00Z")) == utc("2026-12-28T14:00Z")
    assert not is_allowed(w, [NY], utc("2026-12-25T17:00Z"))


def test_two_zones_only_in_their_overlap() -> None:
    w = window("09:00", "21:00")
    both = [NY, LA]
    assert next_allowed(w, both, utc("2026-06-10T12:00Z")) == utc("2026-06-10T16:00Z")  # 12 ET
    assert is_allowed(w, both, utc("2026-06-11T00:59:59Z"))  # 20:59:59 ET
    assert not is_allowed(w, both, utc("2026-06-11T01:00Z"))  # 21:00 ET
    assert not is_allowed(w, both, utc("2026-06-10T15:59:59Z"))  # 08:59:59 PT


def test_opening_exactly_a_day_later_is_found() -> None:
    # Tuesday 09:00 EDT, on Wednesdays only: the opening is exactly 24 h later.
    w = window("09:00", "21:00", ["wed"])
    assert next_allowed(w, [NY], utc("2026-06-09T13:00Z")) == utc("2026-06-10T13:00Z")


def test_a_week_emptied_by_a_restricted_date_is_not_jumped_over() -> None:
    # Monday evenings in Los Angeles, from Sunday evening: Monday 2026-06-15 is
    # restricted, so nothing is allowed for a week, which must not look like the weeks
    # that repeat until the next offset change. That Monday is still the local date when
    # UTC day 2026-06-16 begins. The next Monday evening starts at 04:00 UTC on 06-23.
    w = window("21:00", "23:00", ["mon"], ["2026-06-15"])
    assert next_allowed(w, [LA], utc("2026-06-15T03:00Z")) == utc("2026-06-23T04:00Z")


def test_zones_that_never_overlap_have_no_allowed_instant() -> None:
    w = window("09:00", "12:00")
    with pytest.raises(NoAllowedInstant, match="Asia/Tokyo"):
        next_allowed(w, [ZoneInfo("Asia/Tokyo"), NY], utc("2026-06-10T12:00Z"))


def test_overlap_that_starts_at_an_offset_change_months_away() -> None:
    # London is UTC+1 all summer: 09:00-10:00 never overlaps in both until the clocks go
    # back on 2026-10-25 (01:00 UTC); that Sunday 09:00 is the first common hour.
    w = window("09:00", "10:00")
    both = [ZoneInfo("Europe/London"), ZoneInfo("UTC")]
    assert next_allowed(w, both, utc("2026-06-10T00:00Z")) == utc("2026-10-25T09:00Z")
    with pytest.raises(NoAllowedInstant):
        next_allowed(w, both, utc("2026-06-10T00:00Z"), horizon_days=100)
    # Restricted dates on the way and on that Sunday: the Monday after.
    held = window("09:00", "10:00", restricted=["2026-07-01", "2026-10-25"])
    assert next_allowed(held, both, utc("2026-06-10T00:00Z")) == utc("2026-10-26T09:00Z")


def test_no_days_has_no_allowed_instant() -> None:
    w = CallingWindow(dt.time(9), dt.time(21), frozenset())
    with pytest.raises(NoAllowedInstant):
        next_allowed(w, [NY], utc("2026-06-10T12:00Z"))
    assert not is_allowed(w, [NY], utc("2026-06-10T16:00Z"))


def test_no_window_means_any_time() -> None:
    at = dt.datetime(2026, 6, 10, 3, 0, tzinfo=NY)
    assert is_allowed(None, [NY], at)
    assert next_allowed(None, [NY], at) == at
    assert next_allowed(None, [NY], at).tzinfo is UTC


def test_naive_instants_and_empty_zones_are_refused() -> None:
    w = window("09:00", "21:00")
    with pytest.raises(ValueError, match="timezone-aware"):
        is_allowed(w, [NY], dt.datetime(2026, 6, 10, 12))
    with pytest.raises(ValueError, match="timezone-aware"):
        next_allowed(w, [NY], dt.datetime(2026, 6, 10, 12))
    with pytest.raises(ValueError, match="zones"):
        is_allowed(w, [], utc("2026-06-10T12:00Z"))
    with pytest.raises(ValueError, match="zones"):
        next_allowed(w, [], utc("2026-06-10T12:00Z"))


def test_next_allowed_is_fast() -> None:
    """Typical answers take tens of microseconds, a 400-day sweep a fraction of a ms;
    the bounds are loose so a busy machine does not fail them."""
    w = window("09:00", "21:00", ["mon", "tue", "wed", "thu", "fri"])
    typical = [utc("2026-06-11T03:00Z"), utc("2026-06-13T01:00Z"), utc("2026-11-01T05:30Z")]
    started = time.perf_counter()
    for _ in range(100):
        for at in typical:
            next_allowed(w, [NY, LA], at)
    assert (time.perf_counter() - started) / 300 < 1e-3

    never = window("09:00", "12:00")
    started = time.perf_counter()
    for _ in range(5):
        with pytest.raises(NoAllowedInstant):
            next_allowed(never, [ZoneInfo("Asia/Tokyo"), NY], utc("2026-06-10T12:00Z"))
    assert (time.perf_counter() - started) / 5 < 20e-3


# --- zones_for ------------------------------------------------------------------------------


def test_explicit_timezone_wins() -> None:
    assert zones_for("Europe/Berlin", "+12125550123") == (ZoneInfo("Europe/Berlin"),)


def test_us_number_in_one_zone() -> None:
    assert zones_for(None, "+12125550123") == (NY,)
    assert zones_for("", "+14155550123") == (LA,)


def test_number_spanning_zones_gets_all_of_them() -> None:
    assert set(zones_for(None, "+12085550123")) == {ZoneInfo("America/Boise"), LA}  # Idaho
    russia = zones_for(None, "+79161234567")
    assert {ZoneInfo("Europe/Moscow"), ZoneInfo("Asia/Vladivostok")} <= set(russia)
    assert len(russia) == len(set(russia))


def test_unplaceable_numbers_fall_back_to_the_default() -> None:
    assert zones_for(None, "not a number") == (ZoneInfo("UTC"),)
    assert zones_for(None, "+15555550123") == (ZoneInfo("UTC"),)  # phonenumbers: Etc/Unknown
    assert zones_for(None, "+15555550123", default="America/Chicago") == (
        ZoneInfo("America/Chicago"),
    )


def test_zone_names_zoneinfo_cannot_load_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    names = ("Etc/Unknown", "Not/A_Zone", "../etc/passwd", "Europe/Paris")
    monkeypatch.setattr(windows.phone_timezones, "time_zones_for_number", lambda _n: names)
    assert zones_for(None, "+33142685300") == (ZoneInfo("Europe/Paris"),)
    monkeypatch.setattr(windows.phone_timezones, "time_zones_for_number", lambda _n: names[:3])
    assert zones_for(None, "+33142685300", default="Europe/Rome") == (ZoneInfo("Europe/Rome"),)


def test_unknown_zone_names_are_errors_not_guesses() -> None:
    with pytest.raises(ValueError, match="Mars/Olympus"):
        zones_for("Mars/Olympus", "+12125550123")
    with pytest.raises(ValueError, match="default"):
        zones_for(None, "not a number", default="Mars/Olympus")


# --- from_json ------------------------------------------------------------------------------


def test_from_json_reads_the_template_format() -> None:
    assert CallingWindow.from_json(None) is None
    w = CallingWindow.from_json(
        {
            "start": "09:00",
            "end": "21:30",
            "days": ["sat", "mon", "mon"],
            "restricted_dates": ["2026-12-25"],
        }
    )
    assert w == CallingWindow(
        start=dt.time(9),
        end=dt.time(21, 30),
        days=frozenset({0, 5}),
        restricted_dates=frozenset({dt.date(2026, 12, 25)}),
    )
    assert window("09:00", "21:00").restricted_dates == frozenset()


GOOD = {"start": "09:00", "end": "21:00", "days": ["mon"]}


@pytest.mark.parametrize(
    ("data", "prefix"),
    [
        ({k: v for k, v in GOOD.items() if k != "start"}, "calling_window.start:"),
        ({**GOOD, "start": "9:00"}, "calling_window.start:"),
        ({**GOOD, "start": 900}, "calling_window.start:"),
        ({**GOOD, "end": "24:00"}, "calling_window.end:"),
        ({**GOOD, "end": "09:00"}, "calling_window.end:"),
        ({**GOOD, "end": "08:00"}, "calling_window.end:"),
        ({**GOOD, "days": []}, "calling_window.days:"),
        ({**GOOD, "days": "mon"}, "calling_window.days:"),
        ({**GOOD, "days": ["monday"]}, "calling_window.days:"),
        ({**GOOD, "restricted_dates": "2026-12-25"}, "calling_window.restricted_dates:"),
        ({**GOOD, "restricted_dates": ["2026-02-30"]}, "calling_window.restricted_dates:"),
        ({**GOOD, "restricted_dates": ["20261225"]}, "calling_window.restricted_dates:"),
        ({**GOOD, "restricted_date": ["2026-12-25"]}, "calling_window.restricted_date:"),
        (["09:00", "21:00"], "calling_window:"),
    ],
)
def test_from_json_names_the_bad_key(data: Any, prefix: str) -> None:
    with pytest.raises(ValueError) as raised:
        CallingWindow.from_json(data)
    assert str(raised.value).startswith(prefix)


def test_window_built_in_code_is_checked_too() -> None:
    with pytest.raises(ValueError, match="end"):
        CallingWindow(dt.time(21), dt.time(9), frozenset({0}))
    with pytest.raises(ValueError, match="days"):
        CallingWindow(dt.time(9), dt.time(21), frozenset({7}))
    with pytest.raises(ValueError, match="start"):
        CallingWindow(dt.time(9, tzinfo=UTC), dt.time(21), frozenset({0}))
