"""Calling windows: when a lead may be called, as pure time math (no I/O, no database).

A window is a local wall-clock range [start, end) on some weekdays, minus restricted
local dates. Whether an instant is allowed is decided per instant, from the wall-clock
time that instant shows in the lead's zone: that single definition is what makes DST
behave as a person expects (a window opening inside a spring-forward gap opens when the
clocks jump; in a fall-back hour the first 01:30 opens a 01:30 window and every instant
is judged by the wall time it shows). A number that spans several zones is allowed only
when it is allowed in all of them.

`next_allowed` finds the earliest allowed instant exactly, without scanning minutes:
each zone's allowed set is a union of half-open UTC intervals, so the earliest allowed
instant after a disallowed one is where some zone's interval begins. Such a beginning is
either an instant whose wall time is exactly `start` or a UTC offset change of that zone
(a change of local date only matters at 00:00, which is then `start`). The sweep walks
one UTC day at a time, collects those boundaries for every zone and returns the first
one that the definition itself accepts. After a whole week with nothing allowed, no
offset change and no restricted date, nothing can be allowed before some zone's next
offset change (the week just repeats), so the sweep jumps there: zones that never overlap
cost well under a millisecond for the 400-day horizon, a typical answer tens of
microseconds.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezones

__all__ = [
    "DAY_NAMES",
    "CallingWindow",
    "NoAllowedInstant",
    "is_allowed",
    "next_allowed",
    "zones_for",
]

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = date.weekday()
_KEYS = frozenset({"start", "end", "days", "restricted_dates"})
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UNKNOWN_ZONE = "Etc/Unknown"  # what phonenumbers answers for a prefix it cannot place

_UTC = dt.UTC
_DAY = dt.timedelta(days=1)
_DAY_S = 86_400
_SECOND = dt.timedelta(seconds=1)
_STEP_S = 3 * _DAY_S  # tzdata never changes an offset twice within 3 days (see _boundaries)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)
# The sweep stops short of datetime.max so that its day arithmetic cannot overflow.
_LAST = dt.datetime(9999, 12, 1, tzinfo=_UTC)


class NoAllowedInstant(ValueError):
    """No instant within the horizon is inside the window in every zone (for example no
    days at all, or zones too far apart for their windows ever to overlap)."""


@dataclass(frozen=True)
class CallingWindow:
    """Local wall-clock hours [start, end) on `days` (0 = Monday), except `restricted_dates`
    (local dates such as public holidays). Same-day windows only: start < end."""

    start: dt.time
    end: dt.time
    days: frozenset[int]
    restricted_dates: frozenset[dt.date] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        # Checked here too (not only in from_json) so that a window built in code cannot
        # silently mean something else than it says.
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, dt.time) or value.tzinfo is not None:
                raise ValueError(f"calling_window.{name}: must be a naive datetime.time")
        if not self.start < self.end:
            raise ValueError("calling_window.end: must be after start (same-day windows only)")
        if not isinstance(self.days, frozenset) or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 6 for d in self.days
        ):
            raise ValueError("calling_window.days: must be a frozenset of weekdays 0-6 (0=Mon)")
        if not isinstance(self.restricted_dates, frozenset) or not all(
            type(d) is dt.date for d in self.restricted_dates
        ):
            raise ValueError("calling_window.restricted_dates: must be a frozenset of dates")

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> CallingWindow | None:
        """The window a template's stored `calling_window` JSON describes; None (no window,
        call at any time) for null. Unknown keys are errors rather than ignored, because a
        misspelt `restricted_dates` would otherwise quietly allow calls on holidays."""
        if data is None:
            return None
        if not isinstance(data, Mapping):
            raise ValueError("calling_window: must be an object or null")
        for key in data:
            if key not in _KEYS:
                raise ValueError(f"calling_window.{key}: is not a known field")
        start = _parse_hhmm(data, "start")
        end = _parse_hhmm(data, "end")
        if not start < end:
            raise ValueError("calling_window.end: must be after start (same-day windows only)")
        days = data.get("days")
        if (
            not isinstance(days, list)
            or not days
            or not all(isinstance(d, str) and d in DAY_NAMES for d in days)
        ):
            raise ValueError(
                f"calling_window.days: must be a non-empty list of {', '.join(DAY_NAMES)}"
            )
        restricted = data.get("restricted_dates")
        if restricted is None:
            restricted = []
        if not isinstance(restricted, list):
            raise ValueError("calling_window.restricted_dates: must be a list of YYYY-MM-DD")
        dates: set[dt.date] = set()
        for value in restricted:
            try:
                if not isinstance(value, str) or not _ISO_DATE.match(value):
                    raise ValueError
                dates.add(dt.date.fromisoformat(value))
            except ValueError:
                raise ValueError(
                    f"calling_window.restricted_dates: {value!r} is not a date YYYY-MM-DD"
                ) from None
        return cls(
            start=start,
            end=end,
            days=frozenset(DAY_NAMES.index(d) for d in days),
            restricted_dates=frozenset(dates),
        )


def _parse_hhmm(data: Mapping[str, Any], key: str) -> dt.time:
    value = data.get(key)
    if not isinstance(value, str) or not _HHMM.match(value):
        raise ValueError(f"calling_window.{key}: must be a time HH:MM (00:00-23:59)")
    return dt.time(int(value[:2]), int(value[3:]))


def _as_utc(instant: dt.datetime) -> dt.datetime:
    """Naive datetimes are refused: guessing their zone is exactly how people get called at
    night."""
    if not isinstance(instant, dt.datetime):
        raise TypeError("instant must be a datetime")
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError("instant must be timezone-aware")
    return instant.astimezone(_UTC)


def _check_zones(zones: Sequence[ZoneInfo]) -> None:
    # An empty sequence would make "allowed in all zones" vacuously true.
    if not zones:
        raise ValueError("zones must not be empty (use zones_for to get at least one)")


def _allowed_in(window: CallingWindow, zone: ZoneInfo, instant: dt.datetime) -> bool:
    """The definition, for one zone: the wall clock `instant` shows there."""
    local = instant.astimezone(zone)
    return (
        window.start <= local.time() < window.end
        and local.weekday() in window.days
        and local.date() not in window.restricted_dates
    )


def is_allowed(
    window: CallingWindow | None, zones: Sequence[ZoneInfo], instant: dt.datetime
) -> bool:
    """Whether `instant` is inside the window in every one of `zones` (a number that may
    ring in several zones must not wake anyone in any of them). No window: always."""
    utc = _as_utc(instant)
    if window is None:
        return True
    _check_zones(zones)
    return all(_allowed_in(window, zone, utc) for zone in zones)


def next_allowed(
    window: CallingWindow | None,
    zones: Sequence[ZoneInfo],
    instant: dt.datetime,
    *,
    horizon_days: int = 400,
) -> dt.datetime:
    """The earliest instant >= `instant` (to the microsecond) that `is_allowed`, in UTC.

    Raises NoAllowedInstant when there is none up to `instant + horizon_days`.
    """
    utc = _as_utc(instant)
    if window is None:
        return utc
    _check_zones(zones)
    zones = tuple(dict.fromkeys(zones))  # a repeated zone adds nothing but work
    # Checked in a changing order: the zone that refused the last candidate is tried first,
    # which keeps many-zone numbers (a toll-free +1 spans ~40 zones) cheap to sweep.
    order = list(zones)

    def allowed(candidate: dt.datetime) -> bool:
        for i, zone in enumerate(order):
            if not _allowed_in(window, zone, candidate):
                if i:
                    order.insert(0, order.pop(i))
                return False
        return True

    if allowed(utc):
        return utc
    if not window.days:
        raise NoAllowedInstant("the calling window has no days")
    try:
        horizon = min(utc + dt.timedelta(days=horizon_days), _LAST)
    except OverflowError:
        horizon = _LAST
    # The sweep moves in UTC days that start on whole seconds, as offset changes do.
    start_s = lo_s = _seconds(utc)
    horizon_s = _seconds(horizon)
    # Each zone's offset at the second before the day being swept.
    offsets = {zone: _offset_at(zone, lo_s - 1) for zone in zones}
    quiet = 0  # consecutive swept days with no offset change and no restricted date near
    while lo_s <= horizon_s:
        lo = _EPOCH + dt.timedelta(seconds=lo_s)
        candidates: set[dt.datetime] = set()
        steady = lo_s != start_s  # the first day is not swept whole: [lo, utc) is skipped
        for zone in zones:
            found, after = _boundaries(window, zone, lo, lo_s, offsets[zone])
            steady = steady and after == offsets[zone]
            offsets[zone] = after
            candidates.update(c for c in found if utc < c <= horizon)
        for candidate in sorted(candidates):
            if allowed(candidate):
                return candidate
        lo_s += _DAY_S
        quiet = quiet + 1 if steady and not _restricted_near(window, lo) else 0
        if quiet == 7:
            # A whole week with fixed offsets and no restricted dates had no allowed
            # instant. With fixed offsets the window repeats weekly, and restricted dates
            # only take instants away, so nothing is allowed until some zone's offset
            # changes: jump to the first day that may hold such a change.
            lo_s = _next_change(zones, offsets, lo_s, horizon_s)
            quiet = 0
    raise NoAllowedInstant(
        f"no instant within {horizon_days} days of {utc.isoformat()} is inside the calling "
        f"window in all of {', '.join(z.key for z in zones)}"
    )


def _seconds(instant: dt.datetime) -> int:
    """Whole POSIX seconds, rounded down."""
    return (instant - _EPOCH) // _SECOND


def _restricted_near(window: CallingWindow, lo: dt.datetime) -> bool:
    """Whether a restricted date is a local date anywhere during [lo, lo + 1 day): that
    spans two UTC dates, and local dates are within a day of UTC (offsets are < 24 h)."""
    return bool(window.restricted_dates) and any(
        lo.date() + dt.timedelta(days=k) in window.restricted_dates for k in (-1, 0, 1, 2)
    )


def _next_change(
    zones: Sequence[ZoneInfo], offsets: Mapping[ZoneInfo, dt.timedelta], from_s: int, to_s: int
) -> int:
    """The start of the first 3-day step after `from_s` in which some zone's offset differs
    from `offsets` (which hold at `from_s - 1`), or a second past `to_s` when none does.
    A step shorter than the shortest gap between two changes holds at most one change, so
    comparing its two ends cannot miss one."""
    best = to_s + 1
    for zone in zones:
        step_s = from_s
        while step_s < best and _offset_at(zone, step_s + _STEP_S - 1) == offsets[zone]:
            step_s += _STEP_S
        best = min(best, step_s)
    return best


def _offset_at(zone: ZoneInfo, seconds: int) -> dt.timedelta:
    """The zone's UTC offset at a POSIX second (zoneinfo changes offsets on whole seconds)."""
    offset = dt.datetime.fromtimestamp(seconds, zone).utcoffset()
    assert offset is not None  # a ZoneInfo always has one
    return offset


def _boundaries(
    window: CallingWindow, zone: ZoneInfo, lo: dt.datetime, lo_s: int, before: dt.timedelta
) -> tuple[list[dt.datetime], dt.timedelta]:
    """Every instant in the UTC day [lo, lo + 1 day) where the zone's allowed set may begin
    (its offset change, if any, and each instant whose wall time is exactly `start` on a
    calling day; possibly a few more), and the zone's offset at the day's last second.

    `lo` is a whole second (`lo_s` since the epoch); `before` is the offset the second
    before it. tzdata never changes a zone's offset twice within three days (checked over
    all zones since 1900), so a day holds at most one change, found by comparing the
    offsets either side of it.
    """
    found: list[dt.datetime] = []
    hi = lo + _DAY
    after = _offset_at(zone, lo_s + _DAY_S - 1)
    if after != before:
        # Bisect for the first second that shows the new offset: `a` still shows
        # `before`, `b` does not.
        a, b = lo_s - 1, lo_s + _DAY_S - 1
        while b - a > 1:
            mid = (a + b) // 2
            if _offset_at(zone, mid) == before:
                a = mid
            else:
                b = mid
        found.append(_EPOCH + dt.timedelta(seconds=b))
    for offset in {before, after}:
        # Wall time = UTC + offset, so under each offset the zone shows during the day,
        # each local date has one UTC instant showing `start`. Around an offset change one
        # of them may be an instant at which the zone shows the other offset (or one in a
        # gap, where the change itself is the boundary): a needless candidate, harmless
        # because every candidate is judged by the definition.
        day = (lo + offset).date()  # earlier dates show `start` before `lo`
        while (candidate := dt.datetime.combine(day, window.start, _UTC) - offset) < hi:
            if (
                candidate >= lo
                and day.weekday() in window.days
                and day not in window.restricted_dates
            ):
                found.append(candidate)
            day += _DAY
    return found, after


def zones_for(timezone: str | None, phone_e164: str, default: str = "UTC") -> tuple[ZoneInfo, ...]:
    """The zones a lead's calls must respect: its explicit IANA zone when it has one, else
    every zone its number's prefix may ring in, else `default`.

    An explicit zone or a default that cannot be loaded is a ValueError rather than a
    silent fallback: bad stored data should be loud, not quietly shift someone's hours.
    """
    if timezone is not None and timezone.strip():
        return (_load(timezone.strip(), "timezone"),)
    try:
        names = phone_timezones.time_zones_for_number(phonenumbers.parse(phone_e164, None))
    except phonenumbers.NumberParseException:
        names = ()
    zones: dict[str, ZoneInfo] = {}
    for name in names:
        if name == _UNKNOWN_ZONE or name in zones:
            continue
        try:
            zones[name] = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue  # phonenumbers' data may name a zone this tzdata does not have
    if zones:
        return tuple(zones.values())
    return (_load(default, "default"),)


def _load(name: str, what: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{what}: {name!r} is not an IANA time zone name") from None
