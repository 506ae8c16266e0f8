"""The scheduler's gauges sampled from PostgreSQL: due leads and the oldest one's age,
live leads per status, calls in flight and channels per outbound number, and a number
that goes away taking its series with it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from dispatcher import metrics
from dispatcher.runtime import Runtime
from dispatcher.settings import Settings


@pytest.fixture(scope="module")
def runtime(database_url: str, redis_url: str) -> Iterator[Runtime]:
    settings = Settings.load({}, database_url=database_url, redis_url=redis_url)
    rt = Runtime.open(settings, providers={})
    yield rt
    rt.close()


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def lead(rt: Runtime, status: str, due_s_ago: float) -> int:
    with rt.pool.connection() as conn:
        row = conn.execute(
            "INSERT INTO leads (reseller_id, phone, template, status, next_attempt_at)"
            " VALUES ('r1', '+14155550100', 'default', %s, now() - make_interval(secs => %s))"
            " RETURNING id",
            (status, due_s_ago),
        ).fetchone()
    assert row is not None
    return int(row["id"])


def number(rt: Runtime, e164: str, channels: int, enabled: bool = True) -> int:
    with rt.pool.connection() as conn:
        row = conn.execute(
            "INSERT INTO outbound_numbers (e164, max_channels, enabled) VALUES (%s, %s, %s)"
            " RETURNING id",
            (e164, channels, enabled),
        ).fetchone()
    assert row is not None
    return int(row["id"])


def open_attempt(rt: Runtime, lead_id: int, number_id: int, e164: str) -> None:
    with rt.pool.connection() as conn:
        conn.execute(
            "INSERT INTO call_attempts (id, lead_id, attempt_no, reseller_id, phone, number_id,"
            " number, provider) VALUES (%s, %s, 1, 'r1', '+14155550100', %s, %s, 'simulator')",
            (uuid.uuid4(), lead_id, number_id, e164),
        )


def test_the_sample_matches_the_database(runtime: Runtime) -> None:
    a = number(runtime, "+12025550101", channels=4)
    b = number(runtime, "+12025550102", channels=2)
    number(runtime, "+12025550103", channels=8, enabled=False)
    for due_s_ago in (120, 30, -600):  # two due, one not yet
        lead(runtime, "BACKLOG", due_s_ago)
    lead(runtime, "QUEUED", 0)
    in_call = [lead(runtime, "IN_CALL", 0) for _ in range(3)]
    lead(runtime, "COMPLETED", 0)  # finished leads are not live
    open_attempt(runtime, in_call[0], a, "+12025550101")
    open_attempt(runtime, in_call[1], a, "+12025550101")
    open_attempt(runtime, in_call[2], b, "+12025550102")

    metrics.sample_backlog(runtime)

    assert gauge("switchboard_due_leads") == 2
    oldest = gauge("switchboard_oldest_due_age_seconds")
    assert oldest is not None and 120 <= oldest < 130
    assert {s: gauge("switchboard_leads", status=s) for s in metrics.LIVE_STATUSES} == {
        "BACKLOG": 3,
        "QUEUED": 1,
        "DIALING": 0,
        "IN_CALL": 3,
    }
    assert gauge("switchboard_calls_in_flight", number="+12025550101") == 2
    assert gauge("switchboard_calls_in_flight", number="+12025550102") == 1
    assert gauge("switchboard_calls_in_flight", number="+12025550103") == 0
    assert gauge("switchboard_number_channels", number="+12025550101") == 4
    assert gauge("switchboard_number_channels", number="+12025550103") is None  # disabled

    with runtime.pool.connection() as conn:  # calls end, the number goes away, all due
        conn.execute("UPDATE call_attempts SET ended_at = now(), outcome = 'completed'")
        conn.execute("DELETE FROM call_attempts WHERE number_id = %s", (b,))
        conn.execute("DELETE FROM outbound_numbers WHERE id = %s", (b,))
        conn.execute("UPDATE leads SET status = 'COMPLETED' WHERE status <> 'COMPLETED'")
    metrics.sample_backlog(runtime)

    assert gauge("switchboard_due_leads") == 0
    assert gauge("switchboard_oldest_due_age_seconds") == 0
    assert gauge("switchboard_calls_in_flight", number="+12025550101") == 0
    assert gauge("switchboard_calls_in_flight", number="+12025550102") is None
    assert gauge("switchboard_number_channels", number="+12025550102") is None
