"""Scheduler tick, dispatch, callbacks and reconcilers on real PostgreSQL and Redis, with
the in-memory provider in place of a telephone network."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Sequence

import psycopg
import pytest
import redis

from dispatcher import callbacks, lifecycle, reconcile, scheduler
from dispatcher.dispatch import dispatch_lead
from dispatcher.lifecycle import Claimed, NewLead
from dispatcher.runtime import Runtime
from dispatcher.settings import Settings
from dispatcher.telephony.base import CallEvent
from dispatcher.telephony.memory import InMemoryProvider


@pytest.fixture()
def provider() -> InMemoryProvider:
    return InMemoryProvider()


@pytest.fixture()
def rt(database_url: str, redis_url: str, provider: InMemoryProvider) -> Iterator[Runtime]:
    settings = Settings.load(
        {}, database_url=database_url, redis_url=redis_url, call_grace_s=0.0, max_call_s=60.0
    )
    runtime = Runtime.open(settings, providers={"simulator": provider})
    with runtime.pool.connection() as conn:
        conn.execute(
            "TRUNCATE leads, call_attempts, lead_events, outbound_numbers, webhook_events"
            " RESTART IDENTITY CASCADE"
        )
        conn.execute(
            'UPDATE templates SET calling_window = NULL, retry = \'{"max_attempts": 2,'
            ' "retry_on": ["busy", "failed"], "delay_s": 0, "backoff": "fixed"}\''
        )
        conn.execute("INSERT INTO outbound_numbers (e164, max_channels) VALUES ('+14155550100', 2)")
    runtime.redis.flushdb()
    reconcile.rebuild_channels(runtime)
    yield runtime
    runtime.close()


def _add_leads(rt: Runtime, n: int, **kw: object) -> list[int]:
    now = dt.datetime.now(dt.UTC)
    with rt.pool.connection() as conn:
        ids = lifecycle.create_leads(
            conn,
            [
                NewLead(
                    reseller_id="r1",
                    phone=f"+1415555{i:04d}",
                    template="default",
                    next_attempt_at=now,
                    **kw,  # type: ignore[arg-type]
                )
                for i in range(n)
            ],
        )
    return [i for i in ids if i is not None]


def _tick(rt: Runtime) -> list[Claimed]:
    sent: list[Claimed] = []

    def send(claimed: Sequence[Claimed]) -> None:
        sent.extend(claimed)

    scheduler.tick(rt, send)
    return sent


def _status(rt: Runtime, lead_id: int) -> str:
    with rt.pool.connection() as conn:
        row = conn.execute("SELECT status FROM leads WHERE id = %s", (lead_id,)).fetchone()
    assert row is not None
    return str(row["status"])


def test_claims_only_as_many_as_free_channels(rt: Runtime, provider: InMemoryProvider) -> None:
    ids = _add_leads(rt, 5)
    first = _tick(rt)
    assert len(first) == 2  # two channels
    assert _tick(rt) == []  # both taken by QUEUED leads
    for c in first:
        assert dispatch_lead(rt, c.lead_id, c.fence) == "placed"
    assert [_status(rt, c.lead_id) for c in first] == ["IN_CALL", "IN_CALL"]
    assert _tick(rt) == []  # both channels in calls
    # One call ends: exactly one more lead is claimed.
    callbacks.apply_event(
        rt, "simulator", provider.finish(provider.requests[0].attempt_id, "completed")
    )
    nxt = _tick(rt)
    assert len(nxt) == 1 and nxt[0].lead_id in ids


def test_stale_and_duplicate_messages_dial_once(rt: Runtime, provider: InMemoryProvider) -> None:
    (lead_id,) = _add_leads(rt, 1)
    (c,) = _tick(rt)
    assert dispatch_lead(rt, lead_id, c.fence - 1) == "stale"
    assert dispatch_lead(rt, lead_id, c.fence) == "placed"
    assert dispatch_lead(rt, lead_id, c.fence) == "stale"  # redelivered message
    assert len(provider.requests) == 1


def test_no_free_slot_defers_without_an_attempt(rt: Runtime, provider: InMemoryProvider) -> None:
    (lead_id,) = _add_leads(rt, 1)
    (c,) = _tick(rt)
    with rt.pool.connection() as conn:
        number_id = conn.execute("SELECT id FROM outbound_numbers").fetchone()["id"]  # type: ignore[index]
    # Someone else (another process) holds both channels.
    assert rt.channels.acquire(number_id, "other-1", 2).taken
    assert rt.channels.acquire(number_id, "other-2", 2).taken
    assert dispatch_lead(rt, lead_id, c.fence) == "deferred:no_free_channel"
    with rt.pool.connection() as conn:
        lead = conn.execute(
            "SELECT status, attempt_count FROM leads WHERE id = %s", (lead_id,)
        ).fetchone()
    assert lead == {"status": "BACKLOG", "attempt_count": 0}
    assert provider.requests == []


def test_flushed_redis_blocks_dialing_until_rebuilt(
    rt: Runtime, provider: InMemoryProvider
) -> None:
    _add_leads(rt, 3)
    claimed = _tick(rt)
    dispatch_lead(rt, claimed[0].lead_id, claimed[0].fence)
    rt.redis.flushdb()  # the in-flight call's slot is gone
    assert dispatch_lead(rt, claimed[1].lead_id, claimed[1].fence) == "deferred:channels_rebuilding"
    added, removed = reconcile.rebuild_channels(rt)
    assert (added, removed) == (1, 0)
    # Now one channel is held by the in-flight call, one is free.
    with rt.pool.connection() as conn:
        conn.execute("UPDATE leads SET next_attempt_at = now() WHERE status = 'BACKLOG'")
    more = _tick(rt)
    results = [dispatch_lead(rt, x.lead_id, x.fence) for x in more]
    assert results.count("placed") == 1
    assert len(provider.requests) == 2


def test_provider_error_ends_attempt_and_retries(rt: Runtime, provider: InMemoryProvider) -> None:
    (lead_id,) = _add_leads(rt, 1)
    provider.fail_next = 1
    (c,) = _tick(rt)
    assert dispatch_lead(rt, lead_id, c.fence) == "provider_error"
    with rt.pool.connection() as conn:
        lead = conn.execute(
            "SELECT status, attempt_count, outcome FROM leads WHERE id = %s", (lead_id,)
        ).fetchone()
        attempt = conn.execute(
            "SELECT outcome, error FROM call_attempts WHERE lead_id = %s", (lead_id,)
        ).fetchone()
    assert lead == {"status": "BACKLOG", "attempt_count": 1, "outcome": "failed"}
    assert attempt is not None and attempt["outcome"] == "failed" and "scripted" in attempt["error"]
    assert rt.channels.holders(1) == set()  # the slot was released


def test_cancel_before_dial_wins(rt: Runtime, provider: InMemoryProvider) -> None:
    (lead_id,) = _add_leads(rt, 1)
    (c,) = _tick(rt)
    with rt.pool.connection() as conn:
        assert lifecycle.cancel(conn, lead_id) is not None
    assert dispatch_lead(rt, lead_id, c.fence) == "stale"
    assert provider.requests == []
    assert _status(rt, lead_id) == "CANCELLED"


def test_callbacks_apply_once_and_never_move_backwards(
    rt: Runtime, provider: InMemoryProvider
) -> None:
    (lead_id,) = _add_leads(rt, 1)
    (c,) = _tick(rt)
    dispatch_lead(rt, lead_id, c.fence)
    attempt_id = provider.requests[0].attempt_id
    call_id = provider.calls[attempt_id].call_id
    ringing = CallEvent("e-ring", call_id, attempt_id, "ringing")
    final = CallEvent("e-done", call_id, attempt_id, "busy", duration_s=0)
    assert callbacks.apply_event(rt, "simulator", final)
    assert not callbacks.apply_event(rt, "simulator", final)  # repeated event id
    assert callbacks.apply_event(rt, "simulator", ringing)  # late, reordered progress event
    with rt.pool.connection() as conn:
        attempt = conn.execute(
            "SELECT call_state, outcome FROM call_attempts WHERE id = %s", (attempt_id,)
        ).fetchone()
        events = conn.execute(
            "SELECT count(*) AS n FROM lead_events WHERE lead_id = %s AND to_status = 'BACKLOG'",
            (lead_id,),
        ).fetchone()
    assert attempt == {"call_state": "ended", "outcome": "busy"}
    assert events == {"n": 2}  # created, then the retry: the call ended once


def test_silent_call_is_ended_from_the_provider(rt: Runtime, provider: InMemoryProvider) -> None:
    (lead_id,) = _add_leads(rt, 1)
    (c,) = _tick(rt)
    dispatch_lead(rt, lead_id, c.fence)
    attempt_id = provider.requests[0].attempt_id
    provider.finish(attempt_id, "completed", duration_s=12.0)  # its callback is lost
    with rt.pool.connection() as conn:
        conn.execute("UPDATE call_attempts SET started_at = now() - interval '2 minutes'")
    assert reconcile.run_all(rt).calls_ended == 1
    assert _status(rt, lead_id) == "COMPLETED"
    assert rt.channels.holders(1) == set()


def test_dispatcher_crash_after_attempt_row_is_recovered(
    rt: Runtime, provider: InMemoryProvider
) -> None:
    """The attempt row was committed, then the worker died before asking the provider."""
    (lead_id,) = _add_leads(rt, 1)
    (c,) = _tick(rt)
    with rt.pool.connection() as conn:
        lifecycle.start_dialing(
            conn,
            lead_id,
            c.fence,
            lifecycle.NewAttempt(uuid.uuid4(), 1, "+14155550100", "simulator"),
        )
        conn.execute("UPDATE call_attempts SET started_at = now() - interval '1 minute'")
    assert reconcile.run_all(rt).calls_ended == 1
    with rt.pool.connection() as conn:
        lead = conn.execute(
            "SELECT status, outcome FROM leads WHERE id = %s", (lead_id,)
        ).fetchone()
    assert lead == {"status": "BACKLOG", "outcome": "failed"}  # retried, never dialed blindly
    assert provider.requests == []


def test_lease_expiry_returns_lead_and_fences_old_message(
    rt: Runtime, provider: InMemoryProvider
) -> None:
    (lead_id,) = _add_leads(rt, 1)
    (c,) = _tick(rt)
    with rt.pool.connection() as conn:
        conn.execute("UPDATE leads SET lease_expires_at = now() - interval '1 second'")
    assert reconcile.run_all(rt).leases_expired == 1
    (again,) = _tick(rt)
    assert again.fence > c.fence
    assert dispatch_lead(rt, lead_id, c.fence) == "stale"
    assert dispatch_lead(rt, lead_id, again.fence) == "placed"


def test_channel_semaphore_never_exceeds_its_limit(redis_url: str) -> None:
    from dispatcher.channels import Acquired, Channels

    client = redis.Redis.from_url(redis_url)
    channels = Channels(client, "t", lease_s=60, grace_s=0)
    assert channels.acquire(7, "a", 2) == Acquired(False, rebuilding=True)  # never rebuilt
    channels.rebuild(7, [])
    assert channels.acquire(7, "a", 2).taken and channels.acquire(7, "b", 2).taken
    assert channels.acquire(7, "c", 2) == Acquired(False)
    channels.release(7, "a")
    channels.release(7, "a")  # twice is harmless
    assert channels.acquire(7, "c", 2).taken
    assert channels.acquire(7, "d", 2) == Acquired(False)
    assert channels.holders(7) == {"b", "c"}
    # A rebuild from a read of PostgreSQL taken before "b" ended must not revive it.
    channels.release(7, "b")
    assert channels.rebuild(7, ["b", "c"]) == (0, 0)
    assert channels.holders(7) == {"c"}
    client.close()


def test_notify_reaches_a_listener(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {lifecycle.NOTIFY_CHANNEL}")
        with psycopg.connect(database_url) as conn:
            lifecycle.notify(conn)
        got = list(listener.notifies(timeout=2, stop_after=1))
    assert [n.channel for n in got] == [lifecycle.NOTIFY_CHANNEL]


def test_lost_answer_keeps_attempt_open_until_provider_confirms(
    rt: Runtime, provider: InMemoryProvider
) -> None:
    """A place-call that timed out after sending may have dialed: never dial again on a
    guess; the reconciler asks the provider and adopts the call it finds."""
    (lead_id,) = _add_leads(rt, 1)
    provider.lose_answer_next = 1
    (c,) = _tick(rt)
    assert dispatch_lead(rt, lead_id, c.fence) == "unknown"
    assert _status(rt, lead_id) == "DIALING"
    assert rt.channels.holders(1) != set()  # the slot stays held while the call may be up
    with rt.pool.connection() as conn:
        conn.execute("UPDATE call_attempts SET started_at = now() - interval '10 seconds'")
    reconcile.run_all(rt)
    assert _status(rt, lead_id) == "IN_CALL"
    with rt.pool.connection() as conn:
        row = conn.execute("SELECT provider_call_id FROM call_attempts").fetchone()
    call_id = provider.calls[provider.requests[0].attempt_id].call_id
    assert row == {"provider_call_id": call_id}
    assert len(provider.requests) == 1


def test_calls_per_second_limit_spaces_calls_and_says_how_long_to_wait(redis_url: str) -> None:
    from dispatcher.channels import Channels, cps_interval_ms

    client = redis.Redis.from_url(redis_url)
    channels = Channels(client, "cps", lease_s=60, grace_s=0)
    channels.rebuild(9, [])
    assert channels.cps_budget(9, 2.0) == (1, cps_interval_ms(2.0) / 1000)
    assert channels.acquire(9, "a", 10, cps=2.0).taken
    second = channels.acquire(9, "b", 10, cps=2.0)
    assert not second.taken and second.cps_wait_s is not None
    assert 0 < second.cps_wait_s <= cps_interval_ms(2.0) / 1000
    budget, wake_s = channels.cps_budget(9, 2.0)  # none now; the next one in wake_s
    assert budget == 0 and 0 < wake_s <= cps_interval_ms(2.0) / 1000
    assert channels.cps_budget(9, None) == (None, 0.0)
    # 2 calls per second never puts 3 calls in any 1-second window.
    assert 2 * cps_interval_ms(2.0) > 1000
    client.close()


def test_a_batch_settles_each_lead_on_its_own(rt: Runtime, provider: InMemoryProvider) -> None:
    """One message, five leads: each gets the outcome it would get alone (two channels)."""
    from dispatcher.dispatch import dispatch_batch

    ids = _add_leads(rt, 5)
    with rt.pool.connection() as conn:
        conn.execute("INSERT INTO dnc (phone, reseller_id) VALUES ('+14155550001', NULL)")
        with conn.transaction():
            claimed = {c.lead_id: c for c in lifecycle.claim(conn, "r1", 5, 30.0)}
    stale, listed, first, second, third = ids
    batch = [(lead_id, claimed[lead_id].fence) for lead_id in ids]
    batch[0] = (stale, claimed[stale].fence - 1)  # an older claim's message
    results = dispatch_batch(rt, batch)
    assert results == {
        stale: "stale",
        listed: "do_not_call",
        first: "placed",
        second: "placed",
        third: "deferred:no_free_channel",
    }
    assert sorted(r.lead_id for r in provider.requests) == [first, second]
    assert [_status(rt, i) for i in ids] == ["QUEUED", "SKIPPED", "IN_CALL", "IN_CALL", "BACKLOG"]
    with rt.pool.connection() as conn:
        attempts = conn.execute(
            "SELECT lead_id, number_id, placed_at IS NOT NULL AS placed, provider_call_id"
            " FROM call_attempts ORDER BY lead_id"
        ).fetchall()
        events = conn.execute(
            "SELECT lead_id, to_status, attempt_id IS NOT NULL AS has_attempt FROM lead_events"
            " WHERE to_status IN ('DIALING', 'IN_CALL') ORDER BY lead_id, id"
        ).fetchall()
    assert [(a["lead_id"], a["placed"]) for a in attempts] == [(first, True), (second, True)]
    assert {a["provider_call_id"] for a in attempts} == {
        provider.calls[r.attempt_id].call_id for r in provider.requests
    }
    assert [(e["lead_id"], e["to_status"], e["has_attempt"]) for e in events] == [
        (first, "DIALING", True),
        (first, "IN_CALL", True),
        (second, "DIALING", True),
        (second, "IN_CALL", True),
    ]
    # The message redelivered: nothing is dialed again.
    assert set(dispatch_batch(rt, batch).values()) == {"stale"}
    assert len(provider.requests) == 2
