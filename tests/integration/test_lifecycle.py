"""The lifecycle's guarded transitions on a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dispatcher import lifecycle
from dispatcher.lifecycle import NewAttempt, NewLead


@pytest.fixture()
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, row_factory=dict_row) as c:
        c.execute(
            "TRUNCATE leads, call_attempts, lead_events, outbound_numbers RESTART IDENTITY CASCADE"
        )
        c.execute("INSERT INTO outbound_numbers (e164, max_channels) VALUES ('+14155550100', 2)")
        c.commit()
        yield c


def _lead(**kw: object) -> NewLead:
    base: dict[str, object] = {
        "reseller_id": "r1",
        "phone": "+14155550123",
        "template": "default",
        "next_attempt_at": dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1),
    }
    base.update(kw)
    return NewLead(**base)  # type: ignore[arg-type]


def _events(conn: psycopg.Connection, lead_id: int) -> list[tuple[str | None, str, str]]:
    rows = conn.execute(
        "SELECT from_status, to_status, reason FROM lead_events WHERE lead_id = %s ORDER BY id",
        (lead_id,),
    ).fetchall()
    return [(r["from_status"], r["to_status"], r["reason"]) for r in rows]


def test_create_is_idempotent_per_reseller(conn: psycopg.Connection) -> None:
    first = lifecycle.create_leads(
        conn, [_lead(idempotency_key="k1"), _lead(idempotency_key="k1", reseller_id="r2")]
    )
    again = lifecycle.create_leads(
        conn, [_lead(idempotency_key="k1"), _lead(skip_reason="do_not_call")]
    )
    conn.commit()
    assert all(first) and again[0] is None and again[1] is not None
    statuses = conn.execute(
        "SELECT status, count(*) AS n FROM leads GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert [(r["status"], r["n"]) for r in statuses] == [("BACKLOG", 2), ("SKIPPED", 1)]
    assert _events(conn, again[1]) == [(None, "SKIPPED", "do_not_call")]


def test_claim_orders_by_priority_and_fences(conn: psycopg.Connection) -> None:
    ids = lifecycle.create_leads(
        conn,
        [
            _lead(priority=1),
            _lead(priority=9),
            _lead(priority=5),
            _lead(next_attempt_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)),
        ],
    )
    conn.commit()
    claimed = lifecycle.claim(conn, "r1", 2, lease_s=30)
    conn.commit()
    assert [c.lead_id for c in claimed] == [ids[1], ids[2]]
    assert all(c.fence == 1 for c in claimed)
    # The future lead is never claimed; the remaining due one is.
    rest = lifecycle.claim(conn, "r1", 10, lease_s=30)
    assert [c.lead_id for c in rest] == [ids[0]]


def test_stale_fence_cannot_dial(conn: psycopg.Connection) -> None:
    (lead_id,) = lifecycle.create_leads(conn, [_lead()])
    (c1,) = lifecycle.claim(conn, "r1", 1, lease_s=0)
    conn.commit()
    assert lifecycle.expire_leases(conn) == [lead_id]
    (c2,) = lifecycle.claim(conn, "r1", 1, lease_s=30)
    conn.commit()
    attempt = NewAttempt(uuid.uuid4(), 1, "+14155550100", "simulator")
    assert lifecycle.start_dialing(conn, lead_id, c1.fence, attempt) is None
    assert lifecycle.start_dialing(conn, lead_id, c2.fence, attempt) is not None
    conn.commit()
    assert c2.fence > c1.fence


def test_call_end_applies_retry_then_fails(conn: psycopg.Connection) -> None:
    conn.execute(
        "UPDATE templates SET retry = %s, calling_window = NULL WHERE name = 'default'",
        (Jsonb({"max_attempts": 2, "retry_on": ["busy"], "delay_s": 0, "backoff": "fixed"}),),
    )
    (lead_id,) = lifecycle.create_leads(conn, [_lead()])
    outcomes = []
    for _ in range(2):
        (c,) = lifecycle.claim(conn, "r1", 1, lease_s=30)
        attempt = NewAttempt(uuid.uuid4(), 1, "+14155550100", "simulator")
        assert lifecycle.start_dialing(conn, lead_id, c.fence, attempt)
        assert lifecycle.mark_in_call(conn, lead_id, attempt.id, "CA1")
        ended = lifecycle.end_call(conn, attempt.id, "busy")
        assert ended is not None
        outcomes.append(ended.lead_status)
        assert lifecycle.end_call(conn, attempt.id, "completed") is None  # applied once
    conn.commit()
    assert outcomes == ["BACKLOG", "FAILED"]
    lead = conn.execute(
        "SELECT status, attempt_count, outcome FROM leads WHERE id = %s", (lead_id,)
    ).fetchone()
    assert lead == {"status": "FAILED", "attempt_count": 2, "outcome": "busy"}
    assert [e[1] for e in _events(conn, lead_id)] == [
        "BACKLOG",
        "QUEUED",
        "DIALING",
        "IN_CALL",
        "BACKLOG",
        "QUEUED",
        "DIALING",
        "IN_CALL",
        "FAILED",
    ]


def test_cancel_wins_only_before_the_call(conn: psycopg.Connection) -> None:
    a, b = lifecycle.create_leads(conn, [_lead(), _lead()])
    assert lifecycle.cancel(conn, a) is not None
    assert lifecycle.cancel(conn, a) is None  # final now
    (c,) = lifecycle.claim(conn, "r1", 1, lease_s=30)
    attempt = NewAttempt(uuid.uuid4(), 1, "+14155550100", "simulator")
    lifecycle.start_dialing(conn, b, c.fence, attempt)
    lifecycle.mark_in_call(conn, b, attempt.id, "CA2")
    assert lifecycle.cancel(conn, b) is None  # IN_CALL: too late
    conn.commit()


def test_claim_takes_due_leads_by_priority_past_future_ones(conn: psycopg.Connection) -> None:
    """Future leads of a higher priority neither block nor precede due ones."""
    now = dt.datetime.now(dt.UTC)
    later = now + dt.timedelta(hours=1)
    ids = lifecycle.create_leads(
        conn,
        [
            _lead(priority=10, next_attempt_at=later),
            _lead(priority=3, next_attempt_at=now - dt.timedelta(seconds=5)),
            _lead(priority=7, next_attempt_at=now - dt.timedelta(seconds=1)),
            _lead(priority=7, next_attempt_at=now - dt.timedelta(seconds=2)),
            _lead(priority=10, next_attempt_at=later),
        ],
    )
    conn.commit()
    first = lifecycle.claim(conn, "r1", 2, 30.0)
    rest = lifecycle.claim(conn, "r1", 5, 30.0)
    conn.commit()
    assert [c.lead_id for c in first] == [ids[3], ids[2]]  # priority 7, oldest first
    assert [c.lead_id for c in rest] == [ids[1]]  # then 3; the future 10s stay


def test_paused_resellers_overdue_leads_do_not_wake_the_scheduler(
    conn: psycopg.Connection,
) -> None:
    from dispatcher.scheduler import seconds_until_next_due

    now = dt.datetime.now(dt.UTC)
    lifecycle.create_leads(
        conn,
        [
            _lead(reseller_id="paused", next_attempt_at=now - dt.timedelta(minutes=5)),
            _lead(reseller_id="r1", next_attempt_at=now + dt.timedelta(seconds=60)),
        ],
    )
    conn.commit()
    assert seconds_until_next_due(conn) == 0.0
    waits = seconds_until_next_due(conn, {"paused"})
    assert waits is not None and 55 < waits <= 60
    assert seconds_until_next_due(conn, {"paused", "r1"}) is None
