"""Call policy through the scheduler and the dispatcher on real PostgreSQL and Redis:
calling hours, do-not-call, frequency caps, pause and resume, expiry, cancel racing a
dispatch, calls per second, and alerts that ignore hours and caps."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator, Sequence
from zoneinfo import ZoneInfo

import pytest
from psycopg.types.json import Jsonb

from dispatcher import callbacks, controls, dnc, leads, lifecycle, reconcile, scheduler
from dispatcher.dispatch import dispatch_lead
from dispatcher.lifecycle import Claimed
from dispatcher.runtime import Runtime
from dispatcher.settings import Settings
from dispatcher.telephony.base import CallRequest
from dispatcher.telephony.memory import InMemoryProvider

WINDOW = {
    "start": "09:00",
    "end": "21:00",
    "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
}
ZONES = (
    "Pacific/Kiritimati", "Pacific/Auckland", "Asia/Tokyo", "Asia/Kolkata", "Asia/Dubai",
    "Europe/Berlin", "UTC", "America/Sao_Paulo", "America/New_York", "America/Chicago",
    "America/Los_Angeles", "Pacific/Honolulu",
)  # fmt: skip


def zone_where_local_hour_in(hours: range) -> str:
    now = dt.datetime.now(dt.UTC)
    for name in ZONES:
        if now.astimezone(ZoneInfo(name)).hour in hours:
            return name
    raise AssertionError(f"no zone at local hours {hours}")


def next_opening(zone: str, after: dt.datetime) -> dt.datetime:
    """Independent of the code under test: the next 09:00 local at or after `after`."""
    local = after.astimezone(ZoneInfo(zone))
    opening = local.replace(hour=9, minute=0, second=0, microsecond=0)
    if opening < local:
        opening = (local + dt.timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
    return opening.astimezone(dt.UTC)


class BlockingProvider(InMemoryProvider):
    """Holds place_call until released, to race a cancel against a dial in progress."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def place_call(self, request: CallRequest) -> str:
        self.entered.set()
        assert self.release.wait(10)
        return super().place_call(request)


@pytest.fixture()
def provider() -> InMemoryProvider:
    return InMemoryProvider()


@pytest.fixture()
def rt(database_url: str, redis_url: str, provider: InMemoryProvider) -> Iterator[Runtime]:
    settings = Settings.load({}, database_url=database_url, redis_url=redis_url)
    runtime = Runtime.open(settings, providers={"simulator": provider})
    with runtime.pool.connection() as conn:
        conn.execute(
            "TRUNCATE leads, call_attempts, lead_events, outbound_numbers, dnc, controls,"
            " fair_shares, webhook_events CASCADE"
        )
        conn.execute(
            "UPDATE templates SET calling_window = %s, frequency_cap = NULL,"
            " retry = %s WHERE name = 'default'",
            (Jsonb(WINDOW), Jsonb({"max_attempts": 3, "retry_on": ["busy"], "delay_s": 0})),
        )
        conn.execute("INSERT INTO outbound_numbers (e164, max_channels) VALUES ('+14155550100', 5)")
    runtime.redis.flushdb()
    reconcile.rebuild_channels(runtime)
    yield runtime
    runtime.close()


def post(rt: Runtime, *items: dict) -> list[dict]:
    with rt.pool.connection() as conn:
        rows = [leads.create(conn, {"reseller_id": "r1", **item})[0] for item in items]
    return rows


def tick(rt: Runtime) -> list[Claimed]:
    claimed: list[Claimed] = []

    def send(batch: Sequence[Claimed]) -> None:
        claimed.extend(batch)

    scheduler.tick(rt, send)
    return claimed


def lead(rt: Runtime, lead_id: int) -> dict:
    with rt.pool.connection() as conn:
        row = conn.execute("SELECT * FROM leads WHERE id = %s", (lead_id,)).fetchone()
    assert row is not None
    return row


def make_due(rt: Runtime, lead_id: int) -> None:
    """Pretend the schedule was wrong: the dispatcher must still refuse to break a rule."""
    with rt.pool.connection() as conn:
        conn.execute("UPDATE leads SET next_attempt_at = now() WHERE id = %s", (lead_id,))


def test_ingest_schedules_night_leads_at_their_next_opening(rt: Runtime) -> None:
    day, night = zone_where_local_hour_in(range(11, 19)), zone_where_local_hour_in(range(0, 6))
    before = dt.datetime.now(dt.UTC)
    d, n = post(
        rt, {"phone": "+14155550001", "timezone": day}, {"phone": "+14155550002", "timezone": night}
    )
    assert d["next_attempt_at"] - before < dt.timedelta(seconds=5)
    assert n["next_attempt_at"] == next_opening(night, before)
    claimed = {c.lead_id for c in tick(rt)}
    assert claimed == {d["id"]}


def test_dispatcher_refuses_outside_the_window_and_defers_to_the_opening(
    rt: Runtime, provider: InMemoryProvider
) -> None:
    night = zone_where_local_hour_in(range(0, 6))
    (n,) = post(rt, {"phone": "+14155550003", "timezone": night})
    make_due(rt, n["id"])
    (c,) = tick(rt)
    assert dispatch_lead(rt, c.lead_id, c.fence) == "deferred:outside_calling_window"
    assert provider.requests == []
    row = lead(rt, n["id"])
    assert (row["status"], row["attempt_count"]) == ("BACKLOG", 0)
    assert row["next_attempt_at"] == next_opening(night, dt.datetime.now(dt.UTC))


def test_alerts_call_at_any_hour(rt: Runtime, provider: InMemoryProvider) -> None:
    night = zone_where_local_hour_in(range(0, 6))
    (a,) = post(rt, {"phone": "+14155550004", "timezone": night, "template": "alert"})
    (c,) = tick(rt)
    assert dispatch_lead(rt, c.lead_id, c.fence) == "placed"
    assert [r.lead_id for r in provider.requests] == [a["id"]]


def test_number_listed_while_its_lead_waits_is_never_called(
    rt: Runtime, provider: InMemoryProvider
) -> None:
    day = zone_where_local_hour_in(range(11, 19))
    (x,) = post(rt, {"phone": "+14155550005", "timezone": day})
    (c,) = tick(rt)  # claimed: QUEUED, so the DNC add itself does not touch it
    with rt.pool.connection() as conn:
        dnc.add(conn, ["+14155550005"], None)
    assert dispatch_lead(rt, c.lead_id, c.fence) == "do_not_call"
    assert lead(rt, x["id"])["status"] == "SKIPPED"
    assert provider.requests == []


def test_frequency_cap_defers_to_when_the_cap_frees(
    rt: Runtime, provider: InMemoryProvider
) -> None:
    with rt.pool.connection() as conn:
        conn.execute(
            "UPDATE templates SET calling_window = NULL,"
            " frequency_cap = '{\"per_phone_per_day\": 1}' WHERE name = 'default'"
        )
    first, second = post(rt, {"phone": "+14155550006"}, {"phone": "+14155550006"})
    claimed = tick(rt)
    results = {c.lead_id: dispatch_lead(rt, c.lead_id, c.fence) for c in claimed}
    assert results == {first["id"]: "placed", second["id"]: "deferred:frequency_cap"}
    with rt.pool.connection() as conn:
        started = conn.execute("SELECT started_at FROM call_attempts").fetchone()["started_at"]  # type: ignore[index]
    assert lead(rt, second["id"])["next_attempt_at"] == started + dt.timedelta(hours=24)
    assert len(provider.requests) == 1


def test_pause_and_resume_lose_nothing(rt: Runtime, provider: InMemoryProvider) -> None:
    with rt.pool.connection() as conn:
        conn.execute("UPDATE templates SET calling_window = NULL WHERE name = 'default'")
        controls.pause(conn, "reseller", "r1")
    (x,) = post(rt, {"phone": "+14155550007"})
    assert tick(rt) == []
    with rt.pool.connection() as conn:
        controls.pause(conn, "global", None)
        controls.resume(conn, "reseller", "r1")
    assert tick(rt) == []
    with rt.pool.connection() as conn:
        controls.resume(conn, "global", None)
    (c,) = tick(rt)
    assert c.lead_id == x["id"]
    assert dispatch_lead(rt, c.lead_id, c.fence) == "placed"


def test_paused_number_is_not_used(rt: Runtime) -> None:
    with rt.pool.connection() as conn:
        conn.execute("UPDATE templates SET calling_window = NULL WHERE name = 'default'")
        number_id = conn.execute("SELECT id FROM outbound_numbers").fetchone()["id"]  # type: ignore[index]
        controls.pause(conn, "number", number_id)
    post(rt, {"phone": "+14155550008"})
    assert tick(rt) == []  # its only number is paused: no free channel


def test_expired_lead_ends_without_a_call(rt: Runtime, provider: InMemoryProvider) -> None:
    with rt.pool.connection() as conn:
        conn.execute("UPDATE templates SET calling_window = NULL WHERE name = 'default'")
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).isoformat()
    (x,) = post(rt, {"phone": "+14155550009", "expires_at": soon})
    time.sleep(1.2)
    (c,) = tick(rt)
    assert dispatch_lead(rt, c.lead_id, c.fence) == "expired"
    assert lead(rt, x["id"])["status"] == "EXPIRED"
    assert provider.requests == []


def test_retry_past_expiry_expires(rt: Runtime, provider: InMemoryProvider) -> None:
    with rt.pool.connection() as conn:
        conn.execute(
            "UPDATE templates SET calling_window = NULL,"
            ' retry = \'{"max_attempts": 3, "retry_on": ["busy"], "delay_s": 3600}\''
            " WHERE name = 'default'"
        )
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat()
    (x,) = post(rt, {"phone": "+14155550010", "expires_at": soon})
    (c,) = tick(rt)
    dispatch_lead(rt, c.lead_id, c.fence)
    callbacks.apply_event(rt, "simulator", provider.finish(provider.requests[0].attempt_id, "busy"))
    row = lead(rt, x["id"])
    assert (row["status"], row["outcome"]) == ("EXPIRED", "busy")


@pytest.fixture()
def blocking() -> BlockingProvider:
    return BlockingProvider()


def test_cancel_waits_for_a_dial_in_progress_then_refuses(
    database_url: str, redis_url: str, blocking: BlockingProvider
) -> None:
    settings = Settings.load({}, database_url=database_url, redis_url=redis_url)
    rt = Runtime.open(settings, providers={"simulator": blocking})
    try:
        with rt.pool.connection() as conn:
            conn.execute(
                "TRUNCATE leads, call_attempts, lead_events, outbound_numbers, controls CASCADE"
            )
            conn.execute("UPDATE templates SET calling_window = NULL WHERE name = 'default'")
            conn.execute(
                "INSERT INTO outbound_numbers (e164, max_channels) VALUES ('+14155550100', 5)"
            )
        reconcile.rebuild_channels(rt)
        (x,) = post(rt, {"phone": "+14155550011"})
        (c,) = tick(rt)
        result: list[str] = []
        dialer = threading.Thread(
            target=lambda: result.append(dispatch_lead(rt, c.lead_id, c.fence))
        )
        dialer.start()
        assert blocking.entered.wait(5)
        cancelled: list[object] = []

        def cancel() -> None:
            with rt.pool.connection() as conn:
                cancelled.append(lifecycle.cancel(conn, x["id"]))

        canceller = threading.Thread(target=cancel)
        canceller.start()
        canceller.join(0.5)
        assert canceller.is_alive(), "the cancel must wait for the dial in progress"
        blocking.release.set()
        dialer.join(5)
        canceller.join(5)
        assert result == ["placed"] and cancelled == [None]  # too late: the call is up
        assert lead(rt, x["id"])["status"] == "IN_CALL"
    finally:
        blocking.release.set()
        rt.close()


def test_calls_per_second_never_exceeded(rt: Runtime, provider: InMemoryProvider) -> None:
    with rt.pool.connection() as conn:
        conn.execute("UPDATE templates SET calling_window = NULL WHERE name = 'default'")
        conn.execute("UPDATE outbound_numbers SET cps = 2, max_channels = 50")
    post(rt, *({"phone": f"+141555501{i:02d}"} for i in range(8)))
    placed_at: list[float] = []
    deferred = 0
    deadline = time.monotonic() + 15
    while len(placed_at) < 8 and time.monotonic() < deadline:
        for c in tick(rt):
            result = dispatch_lead(rt, c.lead_id, c.fence)
            if result == "placed":
                placed_at.append(time.monotonic())
            else:
                assert result == "deferred:cps_limit"
                deferred += 1
        time.sleep(0.05)
    assert len(placed_at) == 8
    for t in placed_at:
        assert sum(1 for u in placed_at if t <= u < t + 1.0) <= 2
    # Claims follow the per-second budget: few leads are claimed only to wait again.
    assert deferred <= 8
