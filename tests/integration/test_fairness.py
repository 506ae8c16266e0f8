"""Fairness measured in dials: one reseller's 50,000 due leads do not delay another's ten,
and a low-priority lead is not held back forever by a stream of high-priority ones."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence

import pytest

from dispatcher import callbacks, lifecycle, reconcile, scheduler
from dispatcher.dispatch import dispatch_lead
from dispatcher.fairness import AGING_EVERY
from dispatcher.lifecycle import Claimed, NewLead
from dispatcher.runtime import Runtime
from dispatcher.settings import Settings
from dispatcher.telephony.memory import InMemoryProvider

CHANNELS = 10


@pytest.fixture()
def world(database_url: str, redis_url: str) -> Iterator[tuple[Runtime, InMemoryProvider]]:
    provider = InMemoryProvider()
    settings = Settings.load({}, database_url=database_url, redis_url=redis_url)
    rt = Runtime.open(settings, providers={"simulator": provider})
    with rt.pool.connection() as conn:
        conn.execute(
            "TRUNCATE leads, call_attempts, lead_events, outbound_numbers, fair_shares CASCADE"
        )
        conn.execute("UPDATE templates SET calling_window = NULL, frequency_cap = NULL")
        conn.execute(
            "INSERT INTO outbound_numbers (e164, max_channels) VALUES ('+14155550100', %s)",
            (CHANNELS,),
        )
    rt.redis.flushdb()
    reconcile.rebuild_channels(rt)
    yield rt, provider
    rt.close()


def _post(rt: Runtime, reseller: str, n: int, priority: int = 5, offset: int = 0) -> list[int]:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    with rt.pool.connection() as conn:
        ids = lifecycle.create_leads(
            conn,
            [
                NewLead(reseller, f"+1415{offset + i:07d}", "default", now, priority=priority)
                for i in range(n)
            ],
        )
    return [i for i in ids if i is not None]


def _round(rt: Runtime, provider: InMemoryProvider) -> list[int]:
    """One scheduler tick; every claimed lead is dialed and its call ends at once.
    Returns the dialed lead ids in dial order."""
    claimed: list[Claimed] = []

    def send(batch: Sequence[Claimed]) -> None:
        claimed.extend(batch)

    scheduler.tick(rt, send)
    dialed = []
    for c in claimed:
        assert dispatch_lead(rt, c.lead_id, c.fence) == "placed"
        dialed.append(c.lead_id)
    for request in provider.requests[-len(claimed) :] if claimed else []:
        callbacks.apply_event(rt, "simulator", provider.finish(request.attempt_id, "completed"))
    return dialed


def test_ten_leads_are_not_stuck_behind_fifty_thousand(
    world: tuple[Runtime, InMemoryProvider],
) -> None:
    rt, provider = world
    _post(rt, "A", 50_000)
    for _ in range(3):
        assert len(_round(rt, provider)) == CHANNELS  # A alone takes every channel
    b_ids = set(_post(rt, "B", 10, offset=60_000))
    dials_after_b: list[int] = []
    while b_ids - set(dials_after_b):
        dials_after_b += _round(rt, provider)
        assert len(dials_after_b) < 1_000, "B is starved"
    last_b = max(i for i, lead in enumerate(dials_after_b) if lead in b_ids)
    a_dials_before_b_done = sum(1 for lead in dials_after_b[: last_b + 1] if lead not in b_ids)
    # README bound: with k = 2 active resellers, B's n-th lead is claimed within n*k claims.
    assert a_dials_before_b_done <= 10 * (2 - 1)


def test_low_priority_is_not_starved_by_a_stream_of_high(
    world: tuple[Runtime, InMemoryProvider],
) -> None:
    rt, provider = world
    with rt.pool.connection() as conn:  # one channel: one claim per round
        conn.execute("UPDATE outbound_numbers SET max_channels = 1")
    (low,) = _post(rt, "A", 1, priority=1)
    dials_before_low = 0
    for round_no in range(20):
        _post(rt, "A", 2, priority=10, offset=1_000 + round_no * 2)  # always more high
        dialed = _round(rt, provider)
        if low in dialed:
            dials_before_low += dialed.index(low)
            break
        dials_before_low += len(dialed)
    assert low in dialed, "the low-priority lead was never dialed"
    # It is the reseller's oldest due lead: one of every AGING_EVERY claims is for it.
    assert dials_before_low < AGING_EVERY
