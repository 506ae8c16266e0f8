"""The dispatch actor through Dramatiq's StubBroker and a real in-process Worker:
the scheduler's messages reach the actor, a redelivered message dials nobody twice."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from dispatcher import actors, lifecycle, reconcile, scheduler
from dispatcher.lifecycle import NewLead
from dispatcher.runtime import Runtime
from dispatcher.settings import Settings
from dispatcher.telephony.memory import InMemoryProvider


@pytest.fixture()
def stub() -> Iterator[StubBroker]:
    broker = StubBroker()
    broker.emit_after("process_boot")
    mine = (actors.dispatch_lead, actors.dispatch_leads)
    original = actors.dispatch_lead.broker
    for actor in mine:
        actor.broker = broker
        broker.declare_actor(actor)
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    yield broker
    worker.stop()
    for actor in mine:
        actor.broker = original


@pytest.fixture()
def rt(database_url: str, redis_url: str) -> Iterator[tuple[Runtime, InMemoryProvider]]:
    provider = InMemoryProvider()
    settings = Settings.load({}, database_url=database_url, redis_url=redis_url)
    runtime = Runtime.open(settings, providers={"simulator": provider})
    with runtime.pool.connection() as conn:
        conn.execute("TRUNCATE leads, call_attempts, lead_events, outbound_numbers CASCADE")
        conn.execute("UPDATE templates SET calling_window = NULL")  # call at any hour
        conn.execute("INSERT INTO outbound_numbers (e164, max_channels) VALUES ('+14155550100', 3)")
    runtime.redis.flushdb()
    reconcile.rebuild_channels(runtime)
    actors.use_runtime(runtime)
    yield runtime, provider
    actors.use_runtime(None)
    runtime.close()


def test_scheduler_messages_reach_the_actor_once(
    stub: StubBroker, rt: tuple[Runtime, InMemoryProvider]
) -> None:
    runtime, provider = rt
    now = dt.datetime.now(dt.UTC)
    with runtime.pool.connection() as conn:
        ids = lifecycle.create_leads(
            conn,
            [NewLead("r1", f"+1415555010{i}", "default", now) for i in range(5)],
        )
    sent: list[lifecycle.Claimed] = []
    to_dramatiq = scheduler.sender(runtime.settings)

    def send(claimed: list[lifecycle.Claimed]) -> None:
        sent.extend(claimed)
        to_dramatiq(claimed)
        to_dramatiq(claimed)  # at-least-once: every message delivered twice

    scheduler.tick(runtime, send)  # type: ignore[arg-type]
    stub.join(actors.DISPATCH_QUEUE, fail_fast=True)
    assert len(sent) == 3  # three channels
    assert sorted(r.lead_id for r in provider.requests) == sorted(c.lead_id for c in sent)
    with runtime.pool.connection() as conn:
        statuses = conn.execute(
            "SELECT status, count(*) AS n FROM leads WHERE id = ANY(%s) GROUP BY 1 ORDER BY 1",
            (ids,),
        ).fetchall()
    assert [(r["status"], r["n"]) for r in statuses] == [("BACKLOG", 2), ("IN_CALL", 3)]
