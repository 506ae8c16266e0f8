"""The `ops` schema on a database seeded with known leads, attempts and events: exact rows
from every view and function, the read-only role, and `switchboard ops` on the same data.

Times are either fixed (H, a whole UTC hour long ago: history) or relative to the
database's clock at seeding (T: live leads, due and stuck ones). Each test reseeds, so
the margins around the views' now()-based thresholds (30 s at the least) are never near.
Ages are checked exactly against the now() of the transaction that read the view.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from typer.testing import CliRunner

from dispatcher.cli import app

READER = "switchboard_ops_reader"
H = dt.datetime(2025, 6, 1, 10, 0, tzinfo=dt.UTC)
VIEWS = (
    "attempts_per_lead",
    "channel_use",
    "due_backlog",
    "due_backlog_total",
    "failures",
    "outcomes_hourly",
    "queue_depth",
    "stuck_leads",
)
N1, N2, N3 = "+15550000001", "+15550000002", "+15550000003"
NUMBERS = {1: N1, 2: N2, 3: N3}


def s(seconds: float) -> dt.timedelta:
    return dt.timedelta(seconds=seconds)


def aid(n: int) -> uuid.UUID:
    """Attempt ids: aid(91) is lead 9's first attempt."""
    return uuid.UUID(int=n)


def age(now: dt.datetime, since: dt.datetime) -> Decimal:
    """What round(extract(epoch FROM now - since), 1) gives, computed exactly."""
    d = now - since
    exact = Decimal(d.days * 86400 + d.seconds) + Decimal(d.microseconds) / Decimal(10**6)
    return exact.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def hour(at: dt.datetime) -> dt.datetime:
    return at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


# --- the seed --------------------------------------------------------------------------


Event = tuple[dt.datetime, str | None, str, str, int | None]


def ev(at: dt.datetime, change: str, reason: str, attempt_no: int | None = None) -> Event:
    """A lead_events row; `change` is "FROM>TO", or ">TO" for the lead's creation."""
    from_, to = change.split(">")
    return (at, from_ or None, to, reason, attempt_no)


@dataclass
class Call:
    no: int
    number_id: int
    started: dt.datetime
    placed: dt.datetime | None = None
    answered: dt.datetime | None = None
    ended: dt.datetime | None = None
    outcome: str | None = None
    error: str | None = None


@dataclass
class Lead:
    id: int
    reseller: str
    status: str
    events: list[Event]
    calls: list[Call] = field(default_factory=list)
    template: str = "default"
    next_at: dt.datetime | None = None  # default: created
    outcome: str | None = None
    lease: dt.datetime | None = None
    current: int | None = None  # attempt no of current_attempt_id


def seed_leads(t: dt.datetime) -> list[Lead]:
    """Two resellers, every status; history at H, live leads around T."""

    def ago(seconds: float) -> dt.datetime:
        return t - s(seconds)

    def h(seconds: float) -> dt.datetime:
        return H + s(seconds)

    new = ">BACKLOG", "created"
    claimed = "BACKLOG>QUEUED", "claimed"
    return [
        # acme: due now (2), due in an hour (1)
        Lead(1, "acme", "BACKLOG", [ev(ago(600), *new)], next_at=ago(600)),
        Lead(2, "acme", "BACKLOG", [ev(ago(30), *new)], next_at=ago(30)),
        Lead(3, "acme", "BACKLOG", [ev(ago(60), *new)], next_at=t + s(3600)),
        # acme: QUEUED 30 s past its lease (stuck), and one within its lease
        Lead(4, "acme", "QUEUED", [ev(ago(200), *new), ev(ago(150), *claimed)], lease=ago(120)),
        Lead(5, "acme", "QUEUED", [ev(ago(10), *new), ev(t, *claimed)], lease=t + s(1800)),
        # acme: DIALING for 5 minutes, never placed (stuck); IN_CALL for 10 s
        Lead(
            6, "acme", "DIALING",
            [ev(ago(400), *new), ev(ago(301), *claimed),
             ev(ago(300), "QUEUED>DIALING", "dialing", 1)],
            calls=[Call(1, 1, ago(300))], current=1,
        ),
        Lead(
            7, "acme", "IN_CALL",
            [
                ev(ago(20), *new), ev(ago(13), *claimed),
                ev(ago(12), "QUEUED>DIALING", "dialing", 1),
                ev(ago(10), "DIALING>IN_CALL", "provider_accepted", 1),
            ],
            calls=[Call(1, 1, ago(12), placed=ago(10))], current=1,
        ),
        # zeta: due now (1); IN_CALL for two hours (stuck); DIALING for 5 s
        Lead(18, "zeta", "BACKLOG", [ev(ago(120), *new)], next_at=ago(120)),
        Lead(
            19, "zeta", "IN_CALL",
            [
                ev(ago(7300), *new), ev(ago(7206), *claimed),
                ev(ago(7205), "QUEUED>DIALING", "dialing", 1),
                ev(ago(7200), "DIALING>IN_CALL", "provider_accepted", 1),
            ],
            calls=[Call(1, 2, ago(7205), placed=ago(7200), answered=ago(7190))], current=1,
        ),
        Lead(
            20, "zeta", "DIALING",
            [ev(ago(6), *new), ev(ago(5), "QUEUED>DIALING", "dialing", 1)],
            calls=[Call(1, 2, ago(5))], current=1,
        ),
        # finished, in the hours after H
        Lead(
            8, "acme", "COMPLETED",
            [ev(H, *new), ev(h(300), "QUEUED>DIALING", "dialing", 1),
             ev(h(360), "IN_CALL>COMPLETED", "call_completed", 1)],
            calls=[Call(1, 1, h(300), h(301), h(305), h(360), "completed")],
            outcome="completed",
        ),
        Lead(  # the timeline lead: voicemail, retried, busy
            9, "acme", "FAILED",
            [
                ev(H, *new),
                ev(h(599), *claimed),
                ev(h(600), "QUEUED>DIALING", "dialing", 1),
                ev(h(601), "DIALING>IN_CALL", "provider_accepted", 1),
                ev(h(631), "IN_CALL>BACKLOG", "call_voicemail", 1),
                ev(h(4199), *claimed),
                ev(h(4200), "QUEUED>DIALING", "dialing", 2),
                ev(h(4201), "DIALING>IN_CALL", "provider_accepted", 2),
                ev(h(4205), "IN_CALL>FAILED", "call_busy", 2),
            ],
            calls=[
                Call(1, 1, h(600), h(601), h(611), h(631), "voicemail"),
                Call(2, 2, h(4200), h(4201), None, h(4205), "busy", "sip 486 [busy here]"),
            ],
            outcome="busy",
        ),
        Lead(
            10, "acme", "FAILED",
            [ev(h(6600), *new), ev(h(7260), "DIALING>FAILED", "call_failed", 1)],
            calls=[Call(1, 1, h(7200), None, None, h(7260), "failed", "provider: timeout")],
            outcome="failed",
        ),
        Lead(
            11, "zeta", "FAILED",
            [ev(H, *new), ev(h(10830), "DIALING>FAILED", "call_failed", 1)],
            calls=[Call(1, 2, h(10800), None, None, h(10830), "failed", "provider: timeout")],
            template="alert", outcome="failed",
        ),
        Lead(
            12, "zeta", "FAILED",
            [ev(H, *new), ev(h(11520), "DIALING>FAILED", "call_failed", 1)],
            calls=[Call(1, 2, h(11400), None, None, h(11520), "failed", "never placed")],
            template="alert", outcome="failed",
        ),
        Lead(
            13, "acme", "EXPIRED",
            [ev(H, *new), ev(h(14399), *claimed), ev(h(14400), "QUEUED>EXPIRED", "expired")],
        ),
        Lead(
            14, "zeta", "EXPIRED",
            [ev(H, *new), ev(h(14440), "IN_CALL>EXPIRED", "call_no_answer_no_time_left", 1)],
            calls=[Call(1, 2, h(14400), h(14401), None, h(14440), "no_answer")],
            template="alert", outcome="no_answer",
        ),
        Lead(  # two misses in hour H+1, answered just now on number 1
            15, "zeta", "COMPLETED",
            [ev(H, *new), ev(ago(20), "IN_CALL>COMPLETED", "call_completed", 3)],
            calls=[
                Call(1, 2, h(3600), ended=h(3630), outcome="no_answer"),
                Call(2, 2, h(3720), ended=h(3740), outcome="busy"),
                Call(3, 1, ago(30), ago(29), ago(25), ago(20), "completed"),
            ],
            template="alert", outcome="completed",
        ),
        Lead(16, "zeta", "SKIPPED", [ev(H, ">SKIPPED", "do_not_call")]),
        Lead(17, "acme", "CANCELLED", [ev(H, *new), ev(h(300), "BACKLOG>CANCELLED", "cancelled")]),
    ]  # fmt: skip


def seed(conn: psycopg.Connection[Any]) -> dt.datetime:
    """Replace the operational tables' rows with the seed; returns T (the DB's now())."""
    t: dt.datetime = conn.execute("SELECT now() AS t").fetchone()["t"]  # type: ignore[index]
    conn.execute(
        "TRUNCATE leads, call_attempts, lead_events, outbound_numbers, controls"
        " RESTART IDENTITY CASCADE"
    )
    conn.execute(
        "INSERT INTO outbound_numbers"
        " (id, e164, provider, max_channels, cps, reseller_id, enabled) VALUES"
        " (1, %s, 'simulator', 4, 2, NULL, true),"
        " (2, %s, 'simulator', 2, NULL, 'zeta', true),"
        " (3, %s, 'twilio', 1, NULL, NULL, false)",
        (N1, N2, N3),
    )
    conn.execute(
        "INSERT INTO controls (scope, scope_id, paused) VALUES"
        " ('reseller', 'zeta', true), ('reseller', 'acme', false), ('number', '3', true)"
    )
    for lead in seed_leads(t):
        created, last = lead.events[0][0], lead.events[-1][0]
        conn.execute(
            """
            INSERT INTO leads (id, reseller_id, phone, template, status, attempt_count,
                next_attempt_at, outcome, lease_expires_at, current_attempt_id, created_at,
                updated_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            """,
            (
                lead.id,
                lead.reseller,
                f"+1415555{lead.id:04d}",
                lead.template,
                lead.status,
                len(lead.calls),
                lead.next_at or created,
                lead.outcome,
                lead.lease,
                aid(lead.id * 10 + lead.current) if lead.current else None,
                created,
                last,
            ),
        )
        for c in lead.calls:
            state = "ended" if c.ended else ("in-progress" if c.placed else "created")
            conn.execute(
                """
                INSERT INTO call_attempts (id, lead_id, attempt_no, reseller_id, phone,
                    number_id, number, provider, provider_call_id, call_state, outcome, error,
                    started_at, placed_at, answered_at, ended_at)
                VALUES (%s, %s, %s, %s, %s, %s, %s, 'simulator', %s, %s, %s, %s, %s, %s, %s, %s)
                """,
                (
                    aid(lead.id * 10 + c.no),
                    lead.id,
                    c.no,
                    lead.reseller,
                    f"+1415555{lead.id:04d}",
                    c.number_id,
                    NUMBERS[c.number_id],
                    f"CA{lead.id}{c.no}" if c.placed else None,
                    state,
                    c.outcome,
                    c.error,
                    c.started,
                    c.placed,
                    c.answered,
                    c.ended,
                ),
            )
        for at, from_, to, reason, no in lead.events:
            conn.execute(
                "INSERT INTO lead_events (lead_id, from_status, to_status, reason, attempt_id, at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (lead.id, from_, to, reason, aid(lead.id * 10 + no) if no else None, at),
            )
    return t


@pytest.fixture()
def seeded(database_url: str) -> Iterator[dt.datetime]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        t = seed(conn)
    yield t


def read(url: str, sql: str, params: Any = None) -> tuple[dt.datetime, list[dict[str, Any]]]:
    """The rows, and the now() they were computed at (one transaction, so one now())."""
    with psycopg.connect(url, row_factory=dict_row) as conn:
        now = conn.execute("SELECT now() AS now").fetchone()["now"]  # type: ignore[index]
        rows = conn.execute(sql, params).fetchall()
    return now, rows


# --- the views -------------------------------------------------------------------------


def test_the_ops_schema_has_exactly_the_documented_views_and_functions(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        views = conn.execute(
            "SELECT table_name FROM information_schema.views WHERE table_schema = 'ops' ORDER BY 1"
        ).fetchall()
        functions = conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p"
            " WHERE p.pronamespace = 'ops'::regnamespace ORDER BY 1"
        ).fetchall()
    assert tuple(v[0] for v in views) == VIEWS
    assert [f[0] for f in functions] == [
        "ops.lead_timeline(bigint)",
        "ops.stuck_leads(double precision,double precision,double precision)",
    ]


def test_queue_depth_counts_leads_per_reseller_and_status(
    database_url: str, seeded: dt.datetime
) -> None:
    _, rows = read(database_url, "SELECT * FROM ops.queue_depth")
    assert [(r["reseller_id"], r["status"], r["leads"]) for r in rows] == [
        ("acme", "BACKLOG", 3),
        ("acme", "QUEUED", 2),
        ("acme", "DIALING", 1),
        ("acme", "IN_CALL", 1),
        ("acme", "COMPLETED", 1),
        ("acme", "FAILED", 2),
        ("acme", "EXPIRED", 1),
        ("acme", "CANCELLED", 1),
        ("zeta", "BACKLOG", 1),
        ("zeta", "DIALING", 1),
        ("zeta", "IN_CALL", 1),
        ("zeta", "COMPLETED", 1),
        ("zeta", "FAILED", 2),
        ("zeta", "EXPIRED", 1),
        ("zeta", "SKIPPED", 1),
    ]


def test_due_backlog_counts_due_leads_and_the_oldest_ones_age(
    database_url: str, seeded: dt.datetime
) -> None:
    t = seeded
    now, rows = read(database_url, "SELECT * FROM ops.due_backlog")
    assert rows == [
        {
            "reseller_id": "acme",
            "due_leads": 2,  # lead 3 is not due for an hour
            "oldest_due_at": t - s(600),
            "oldest_due_age_s": age(now, t - s(600)),
            "paused": False,
        },
        {
            "reseller_id": "zeta",
            "due_leads": 1,
            "oldest_due_at": t - s(120),
            "oldest_due_age_s": age(now, t - s(120)),
            "paused": True,
        },
    ]
    assert rows[0]["oldest_due_age_s"] >= 600
    now, total = read(database_url, "SELECT * FROM ops.due_backlog_total")
    assert total == [
        {
            "resellers": 2,
            "due_leads": 3,
            "oldest_due_at": t - s(600),
            "oldest_due_age_s": age(now, t - s(600)),
        }
    ]


def test_due_backlog_total_is_one_row_of_zeros_when_nothing_is_due(database_url: str) -> None:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        seed(conn)
        conn.execute("UPDATE leads SET next_attempt_at = now() + interval '1 hour'")
        assert conn.execute("SELECT * FROM ops.due_backlog").fetchall() == []
        assert conn.execute("SELECT * FROM ops.due_backlog_total").fetchall() == [
            {"resellers": 0, "due_leads": 0, "oldest_due_at": None, "oldest_due_age_s": None}
        ]
        conn.rollback()


def _stuck(
    lead_id: int,
    status: str,
    problem: str,
    since: dt.datetime,
    now: dt.datetime,
    *,
    lease: dt.datetime | None = None,
    attempt: int | None = None,
    number: str | None = None,
    call_id: str | None = None,
) -> dict[str, Any]:
    """A row of ops.stuck_leads, read at `now`."""
    return {
        "lead_id": lead_id,
        "reseller_id": "zeta" if lead_id > 17 else "acme",
        "status": status,
        "problem": problem,
        "since": since,
        "in_status_s": age(now, since),
        "lease_expires_at": lease,
        "attempt_id": aid(lead_id * 10 + attempt) if attempt else None,
        "number": number,
        "provider_call_id": call_id,
    }


def test_stuck_leads_by_default_thresholds(database_url: str, seeded: dt.datetime) -> None:
    t = seeded
    now, rows = read(database_url, "SELECT * FROM ops.stuck_leads")
    assert rows == [
        _stuck(
            19,
            "IN_CALL",
            "in_call_too_long",
            t - s(7200),
            now,
            attempt=1,
            number=N2,
            call_id="CA191",
        ),
        _stuck(6, "DIALING", "dialing_too_long", t - s(300), now, attempt=1, number=N1),
        _stuck(4, "QUEUED", "lease_expired", t - s(150), now, lease=t - s(120)),
    ]
    now, same = read(database_url, "SELECT * FROM ops.stuck_leads()")
    assert [r["lead_id"] for r in same] == [19, 6, 4]


def test_stuck_leads_with_tighter_thresholds(database_url: str, seeded: dt.datetime) -> None:
    t = seeded
    now, rows = read(database_url, "SELECT * FROM ops.stuck_leads(0, 1, 5)")
    assert rows == [
        _stuck(
            19,
            "IN_CALL",
            "in_call_too_long",
            t - s(7200),
            now,
            attempt=1,
            number=N2,
            call_id="CA191",
        ),
        _stuck(6, "DIALING", "dialing_too_long", t - s(300), now, attempt=1, number=N1),
        _stuck(4, "QUEUED", "lease_expired", t - s(150), now, lease=t - s(120)),
        _stuck(
            7, "IN_CALL", "in_call_too_long", t - s(10), now, attempt=1, number=N1, call_id="CA71"
        ),
        _stuck(20, "DIALING", "dialing_too_long", t - s(5), now, attempt=1, number=N2),
    ]
    # A negative grace reaches leads whose lease has not expired yet; looser misses all.
    _, rows = read(database_url, "SELECT lead_id FROM ops.stuck_leads(queued_s => -3600)")
    assert [r["lead_id"] for r in rows] == [19, 6, 4, 5]
    _, rows = read(database_url, "SELECT lead_id FROM ops.stuck_leads(3600, 3600, 86400)")
    assert rows == []


def test_channel_use_per_number(database_url: str, seeded: dt.datetime) -> None:
    _, rows = read(database_url, "SELECT * FROM ops.channel_use")
    common = {"provider": "simulator", "enabled": True, "paused": False}
    assert rows == [
        # open: leads 6 and 7; started in 60 s: lead 7's and lead 15's ended call
        {"number_id": 1, "number": N1, **common, "reseller_id": None, "max_channels": 4,
         "in_flight": 2, "utilisation_pct": Decimal("50.0"), "started_last_60s": 2,
         "calls_per_s": Decimal("0.03"), "cps_limit": Decimal("2")},
        # open: leads 19 (two hours) and 20; started in 60 s: lead 20's
        {"number_id": 2, "number": N2, **common, "reseller_id": "zeta", "max_channels": 2,
         "in_flight": 2, "utilisation_pct": Decimal("100.0"), "started_last_60s": 1,
         "calls_per_s": Decimal("0.02"), "cps_limit": None},
        {"number_id": 3, "number": N3, "provider": "twilio", "reseller_id": None,
         "enabled": False, "paused": True, "max_channels": 1, "in_flight": 0,
         "utilisation_pct": Decimal("0.0"), "started_last_60s": 0,
         "calls_per_s": Decimal("0.00"), "cps_limit": None},
    ]  # fmt: skip


def test_outcomes_hourly(database_url: str, seeded: dt.datetime) -> None:
    t = seeded
    _, rows = read(database_url, "SELECT * FROM ops.outcomes_hourly")
    h = dt.timedelta(hours=1)
    assert [tuple(r.values()) for r in rows] == [
        (hour(t - s(20)), "alert", "zeta", "completed", 1),
        (H + 4 * h, "alert", "zeta", "no_answer", 1),
        (H + 3 * h, "alert", "zeta", "failed", 2),
        (H + 2 * h, "default", "acme", "failed", 1),
        (H + h, "alert", "zeta", "busy", 1),
        (H + h, "alert", "zeta", "no_answer", 1),
        (H + h, "default", "acme", "busy", 1),
        (H, "default", "acme", "completed", 1),
        (H, "default", "acme", "voicemail", 1),
    ]
    assert list(rows[0]) == ["hour", "template", "reseller_id", "outcome", "attempts"]


def test_failures_grouped_by_reason_outcome_and_last_error(
    database_url: str, seeded: dt.datetime
) -> None:
    _, rows = read(database_url, "SELECT * FROM ops.failures")
    assert [tuple(r.values()) for r in rows] == [
        ("FAILED", "call_failed", "failed", "provider: timeout", 2,
         H + s(7260), H + s(10830), [11, 10]),
        ("EXPIRED", "call_no_answer_no_time_left", "no_answer", None, 1,
         H + s(14440), H + s(14440), [14]),
        ("EXPIRED", "expired", None, None, 1, H + s(14400), H + s(14400), [13]),
        ("FAILED", "call_failed", "failed", "never placed", 1, H + s(11520), H + s(11520), [12]),
        # the last attempt's error, not the first's (which had none)
        ("FAILED", "call_busy", "busy", "sip 486 [busy here]", 1,
         H + s(4205), H + s(4205), [9]),
    ]  # fmt: skip
    assert list(rows[0]) == [
        "status", "reason", "outcome", "error", "leads", "first_seen", "last_seen",
        "sample_lead_ids",
    ]  # fmt: skip


def test_attempts_per_lead_counts_finished_leads(database_url: str, seeded: dt.datetime) -> None:
    _, rows = read(database_url, "SELECT * FROM ops.attempts_per_lead")
    assert [tuple(r.values()) for r in rows] == [
        # attempts, leads, completed, failed, expired, skipped, cancelled, pct
        (0, 3, 0, 0, 1, 1, 1, Decimal("30.0")),
        (1, 5, 1, 3, 1, 0, 0, Decimal("50.0")),
        (2, 1, 0, 1, 0, 0, 0, Decimal("10.0")),
        (3, 1, 1, 0, 0, 0, 0, Decimal("10.0")),
    ]


TIMELINE_9 = [
    (H, "status", None, "BACKLOG", "created", None, None, None),
    (H + s(599), "status", "BACKLOG", "QUEUED", "claimed", None, None, None),
    # one transaction: the status change first, then the call it started
    (H + s(600), "status", "QUEUED", "DIALING", "dialing", aid(91), None, N1),
    (H + s(600), "call_started", None, None, None, aid(91), None, N1),
    (H + s(601), "status", "DIALING", "IN_CALL", "provider_accepted", aid(91), None, N1),
    (H + s(611), "call_answered", None, None, None, aid(91), None, N1),
    # one transaction: the call ends, then the status change it caused
    (H + s(631), "call_ended", None, None, None, aid(91), "voicemail", N1),
    (H + s(631), "status", "IN_CALL", "BACKLOG", "call_voicemail", aid(91), None, N1),
    (H + s(4199), "status", "BACKLOG", "QUEUED", "claimed", None, None, None),
    (H + s(4200), "status", "QUEUED", "DIALING", "dialing", aid(92), None, N2),
    (H + s(4200), "call_started", None, None, None, aid(92), None, N2),
    (H + s(4201), "status", "DIALING", "IN_CALL", "provider_accepted", aid(92), None, N2),
    (H + s(4205), "call_ended", None, None, "sip 486 [busy here]", aid(92), "busy", N2),
    (H + s(4205), "status", "IN_CALL", "FAILED", "call_busy", aid(92), None, N2),
]


def test_lead_timeline_merges_events_and_calls_in_order(
    database_url: str, seeded: dt.datetime
) -> None:
    _, rows = read(database_url, "SELECT * FROM ops.lead_timeline(9)")
    assert list(rows[0]) == [
        "at", "kind", "from_status", "to_status", "reason", "attempt_id", "outcome", "number",
    ]  # fmt: skip
    assert [tuple(r.values()) for r in rows] == TIMELINE_9
    _, rows = read(database_url, "SELECT * FROM ops.lead_timeline(16)")
    assert [tuple(r.values()) for r in rows] == [
        (H, "status", None, "SKIPPED", "do_not_call", None, None, None)
    ]
    _, rows = read(database_url, "SELECT * FROM ops.lead_timeline(999)")
    assert rows == []


# --- the read-only role ---------------------------------------------------------------


def _as_reader(url: str, sql: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        conn.execute(f"SET ROLE {READER}")
        return conn.execute(sql).fetchall()


@pytest.mark.parametrize(
    "sql",
    [f"SELECT * FROM ops.{v}" for v in VIEWS]
    + ["SELECT * FROM ops.stuck_leads(0, 1, 5)", "SELECT * FROM ops.lead_timeline(9)"],
)
def test_the_reader_role_reads_every_view_and_function(
    database_url: str, seeded: dt.datetime, sql: str
) -> None:
    rows = _as_reader(database_url, sql)
    _, as_owner = read(database_url, sql)
    time_free = [
        {k: v for k, v in r.items() if k not in ("oldest_due_age_s", "in_status_s")} for r in rows
    ]
    assert time_free == [
        {k: v for k, v in r.items() if k not in ("oldest_due_age_s", "in_status_s")}
        for r in as_owner
    ]
    assert rows  # the seed has rows for every view


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM public.leads",
        "SELECT * FROM public.call_attempts",
        "SELECT * FROM public.lead_events",
        "SELECT * FROM public.outbound_numbers",
        "UPDATE public.leads SET priority = 1",
    ],
)
def test_the_reader_role_cannot_touch_public_tables(database_url: str, sql: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _as_reader(database_url, sql)


def test_the_reader_role_is_nologin_and_the_functions_are_not_public(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        login = conn.execute(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (READER,)
        ).fetchone()
        public_grants = conn.execute(
            "SELECT count(*) FROM pg_proc p, aclexplode(p.proacl) a"
            " WHERE p.pronamespace = 'ops'::regnamespace AND a.grantee = 0"
        ).fetchone()
        usage = conn.execute("SELECT has_schema_privilege(%s, 'ops', 'USAGE')", (READER,))
        public_tables = conn.execute(
            "SELECT count(*) FROM pg_class c"
            " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')"
            " AND has_table_privilege(%s, c.oid,"
            " 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')",
            (READER,),
        ).fetchone()
        assert usage.fetchone() == (True,)
    assert login == (False,)
    assert public_grants == (0,)
    assert public_tables == (0,)


# --- switchboard ops -------------------------------------------------------------------


def _cli(url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["ops", *args, "--database-url", url], env={"COLUMNS": "300"})
    return result.exit_code, result.output


def _plain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """View rows as their JSON reads back: numerics as numbers, times and ids as text."""

    def one(v: Any) -> Any:
        if isinstance(v, Decimal):
            return float(v)
        if isinstance(v, dt.datetime):
            return v.isoformat()
        if isinstance(v, uuid.UUID):
            return str(v)
        return v

    return [{k: one(v) for k, v in r.items()} for r in rows]


def _table_rows(output: str, first_cell: str) -> list[list[str]]:
    """The cells of the table lines whose first cell is `first_cell`."""
    rows = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0] == first_cell:
            rows.append(cells)
    return rows


def test_ops_status_json_is_the_views_rows(database_url: str, seeded: dt.datetime) -> None:
    t = seeded
    before, _ = read(database_url, "SELECT 1")
    code, out = _cli(database_url, "status", "--json")
    after, _ = read(database_url, "SELECT 1")
    assert code == 0, out
    got = json.loads(out)
    assert list(got) == ["queue_depth", "due_backlog", "due_backlog_total"]
    _, depth = read(database_url, "SELECT * FROM ops.queue_depth")
    assert got["queue_depth"] == _plain(depth)
    assert len(got["queue_depth"]) == 15
    oldest = {"acme": t - s(600), "zeta": t - s(120)}
    for row in got["due_backlog"] + got["due_backlog_total"]:
        since = oldest[row.get("reseller_id") or "acme"]
        assert age(before, since) <= Decimal(str(row.pop("oldest_due_age_s"))) <= age(after, since)
    _, due = read(database_url, "SELECT * FROM ops.due_backlog")
    _, total = read(database_url, "SELECT * FROM ops.due_backlog_total")
    for r in due + total:
        r.pop("oldest_due_age_s")
    assert got["due_backlog"] == _plain(due)
    assert got["due_backlog_total"] == _plain(total)
    assert [r["due_leads"] for r in got["due_backlog"]] == [2, 1]


def test_ops_status_table(database_url: str, seeded: dt.datetime) -> None:
    code, out = _cli(database_url, "status")
    assert code == 0, out
    assert "ops.queue_depth" in out and "ops.due_backlog_total" in out
    acme = _table_rows(out, "acme")
    assert ["acme", "BACKLOG", "3"] in acme and ["acme", "FAILED", "2"] in acme
    due = [r for r in acme if len(r) == 5]
    assert len(due) == 1 and due[0][1] == "2" and due[0][4] == "no"
    assert float(due[0][3]) >= 600
    (total,) = _table_rows(out, "2")
    assert total[1] == "3"


def test_ops_stuck_json_and_thresholds(database_url: str, seeded: dt.datetime) -> None:
    t = seeded
    before, _ = read(database_url, "SELECT 1")
    code, out = _cli(database_url, "stuck", "--json", "--dialing-s", "1", "--in-call-s", "5")
    after, _ = read(database_url, "SELECT 1")
    assert code == 0, out
    got = json.loads(out)["stuck_leads"]
    since = {19: t - s(7200), 6: t - s(300), 4: t - s(150), 7: t - s(10), 20: t - s(5)}
    for row in got:
        value = Decimal(str(row.pop("in_status_s")))
        assert age(before, since[row["lead_id"]]) <= value <= age(after, since[row["lead_id"]])
    _, expected = read(database_url, "SELECT * FROM ops.stuck_leads(0, 1, 5)")
    for r in expected:
        r.pop("in_status_s")
    assert got == _plain(expected)
    assert [r["lead_id"] for r in got] == [19, 6, 4, 7, 20]
    code, out = _cli(database_url, "stuck", "--json")
    assert [r["lead_id"] for r in json.loads(out)["stuck_leads"]] == [19, 6, 4]


def test_ops_stuck_table(database_url: str, seeded: dt.datetime) -> None:
    code, out = _cli(database_url, "stuck")
    assert code == 0, out
    rows = {r[0]: r for r in _table_rows(out, "19") + _table_rows(out, "6") + _table_rows(out, "4")}
    assert rows["19"][1:4] == ["zeta", "IN_CALL", "in_call_too_long"]
    assert rows["19"][7:] == [str(aid(191)), N2, "CA191"]
    assert rows["6"][1:4] == ["acme", "DIALING", "dialing_too_long"]
    assert rows["4"][3] == "lease_expired" and rows["4"][7] == "-"
    assert _table_rows(out, "20") == []


def test_ops_channels(database_url: str, seeded: dt.datetime) -> None:
    code, out = _cli(database_url, "channels", "--json")
    assert code == 0, out
    _, rows = read(database_url, "SELECT * FROM ops.channel_use")
    assert json.loads(out) == {"channel_use": _plain(rows)}
    assert [r["in_flight"] for r in json.loads(out)["channel_use"]] == [2, 2, 0]
    code, out = _cli(database_url, "channels")
    assert code == 0, out
    assert _table_rows(out, "1") == [
        ["1", N1, "simulator", "-", "yes", "no", "4", "2", "50.0", "2", "0.03", "2"]
    ]
    assert _table_rows(out, "2") == [
        ["2", N2, "simulator", "zeta", "yes", "no", "2", "2", "100.0", "1", "0.02", "-"]
    ]


def test_ops_failures(database_url: str, seeded: dt.datetime) -> None:
    code, out = _cli(database_url, "failures", "--json")
    assert code == 0, out
    _, rows = read(database_url, "SELECT * FROM ops.failures")
    got = json.loads(out)["failures"]
    assert got == _plain(rows)
    assert [(r["leads"], r["sample_lead_ids"]) for r in got] == [
        (2, [11, 10]), (1, [14]), (1, [13]), (1, [12]), (1, [9])
    ]  # fmt: skip
    code, out = _cli(database_url, "failures")
    assert code == 0, out
    # the error is printed as text, not read as rich markup
    (busy,) = [r for r in _table_rows(out, "FAILED") if r[1] == "call_busy"]
    assert busy[2:5] == ["busy", "sip 486 [busy here]", "1"] and busy[7] == "9"


def test_ops_timeline(database_url: str, seeded: dt.datetime) -> None:
    code, out = _cli(database_url, "timeline", "9", "--json")
    assert code == 0, out
    got = json.loads(out)["lead_timeline"]
    _, rows = read(database_url, "SELECT * FROM ops.lead_timeline(9)")
    assert got == _plain(rows)
    assert [(r["kind"], r["attempt_id"]) for r in got] == [
        (row[1], str(row[5]) if row[5] else None) for row in TIMELINE_9
    ]
    code, out = _cli(database_url, "timeline", "9")
    assert code == 0, out
    kinds = [r[1] for line in out.splitlines() if (r := [c.strip() for c in line.split("│")[1:-1]])]
    assert kinds == [row[1] for row in TIMELINE_9]  # body rows only: the header uses ┃
    code, out = _cli(database_url, "timeline", "999")
    assert code == 1 and "lead 999 has no history" in out


def test_ops_watch_refreshes_until_ctrl_c(
    database_url: str, seeded: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--json --watch prints one JSON line per refresh, with fresh data each time."""
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 1:
            with psycopg.connect(database_url) as conn:
                conn.execute("UPDATE call_attempts SET ended_at = now() WHERE lead_id = 20")
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr("dispatcher.ops_cli.time.sleep", sleep)
    code, out = _cli(database_url, "channels", "--json", "--watch")
    assert code == 0, out
    frames = [json.loads(line)["channel_use"] for line in out.splitlines()]
    assert sleeps == [2.0, 2.0]
    assert [[r["in_flight"] for r in f] for f in frames] == [[2, 2, 0], [2, 1, 0]]
