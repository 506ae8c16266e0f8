"""`switchboard recover` on a real PostgreSQL: exact analysis, a dry run that changes
nothing, and an execute that re-queues exactly the selected leads, once."""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import structlog
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from dispatcher import lifecycle, recovery
from dispatcher.cli import app
from dispatcher.lifecycle import NewAttempt, NewLead

NUMBER = "+14155550100"
BUSY = ("busy", "486 Busy Here")


@pytest.fixture(scope="module")
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, row_factory=dict_row) as c:
        retry = {"max_attempts": 3, "retry_on": ["busy", "no_answer", "failed"], "delay_s": 0}
        c.execute(
            "UPDATE templates SET retry = %s, calling_window = NULL WHERE name = 'default'",
            (Jsonb({**retry, "backoff": "fixed"}),),
        )
        # Retries two hours out: a lead that expires in one hour ends EXPIRED after a call.
        c.execute(
            "INSERT INTO templates (name, calling_window, retry, execution_mode)"
            " VALUES ('slow', NULL, %s, 'telephony')",
            (Jsonb({**retry, "delay_s": 7200, "backoff": "fixed"}),),
        )
        c.commit()
        yield c


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures logging onto CliRunner's streams, which close after it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level
    structlog.reset_defaults()


_phones = iter(range(1000, 10_000))


def seed_lead(
    conn: psycopg.Connection,
    reseller: str,
    calls: list[tuple[str, str | None]],
    *,
    template: str = "default",
    max_attempts: int | None = None,
    expires_in: dt.timedelta | None = None,
    expire_unattempted: bool = False,
) -> int:
    """A lead driven through the lifecycle: one call per (outcome, error) in `calls`."""
    now = dt.datetime.now(dt.UTC)
    (lead_id,) = lifecycle.create_leads(
        conn,
        [
            NewLead(
                reseller_id=reseller,
                phone=f"+1415555{next(_phones):04d}",
                template=template,
                next_attempt_at=now - dt.timedelta(seconds=1),
                max_attempts=max_attempts,
                expires_at=now + expires_in if expires_in else None,
            )
        ],
    )
    number_id = the_number_id(conn)
    for outcome, error in calls:
        (claimed,) = lifecycle.claim(conn, reseller, 1, lease_s=30)
        assert claimed.lead_id == lead_id
        attempt = NewAttempt(uuid.uuid4(), number_id, NUMBER, "simulator")
        assert lifecycle.start_dialing(conn, lead_id, claimed.fence, attempt)
        assert lifecycle.end_call(conn, attempt.id, outcome, error=error)
    if expire_unattempted:
        (claimed,) = lifecycle.claim(conn, reseller, 1, lease_s=30)
        assert lifecycle.finish_unattempted(conn, lead_id, claimed.fence, "EXPIRED", "expired")
    conn.commit()
    return lead_id


@pytest.fixture()
def seeded(conn: psycopg.Connection) -> dict[str, list[int]]:
    """Leads by kind; their statuses are asserted here so the tests start from known data."""
    conn.execute("TRUNCATE leads, call_attempts, lead_events, outbound_numbers CASCADE")
    conn.execute("INSERT INTO outbound_numbers (e164, max_channels) VALUES (%s, 4)", (NUMBER,))
    leads = {
        "busy": [seed_lead(conn, "r1", [BUSY], max_attempts=1) for _ in range(3)],
        "no_answer_then_busy": [seed_lead(conn, "r1", [("no_answer", None), BUSY], max_attempts=2)],
        "busy_timeout": [
            seed_lead(conn, "r2", [("busy", "network timeout")], max_attempts=1) for _ in range(2)
        ],
        "no_answer": [
            seed_lead(conn, "r1", [("no_answer", None)], max_attempts=1) for _ in range(2)
        ],
        "failed": [
            seed_lead(conn, "r2", [("failed", "SIP 503")], max_attempts=1) for _ in range(2)
        ],
        "expired_busy": [
            seed_lead(conn, "r1", [BUSY], template="slow", expires_in=dt.timedelta(hours=1))
            for _ in range(2)
        ],
        "expired_undialed": [seed_lead(conn, "r2", [], expire_unattempted=True)],
        "completed": [seed_lead(conn, "r1", [("completed", None)]) for _ in range(2)],
        "old_busy": [seed_lead(conn, "r1", [BUSY], max_attempts=1) for _ in range(2)],
        "retrying": [seed_lead(conn, "r1", [BUSY], max_attempts=3)],
    }
    conn.execute(
        "UPDATE leads SET updated_at = now() - interval '2 days' WHERE id = ANY(%s)",
        (leads["old_busy"],),
    )
    conn.commit()
    statuses = {
        kind: sorted(
            (r["status"], r["outcome"])
            for r in conn.execute(
                "SELECT status, outcome FROM leads WHERE id = ANY(%s)", (ids,)
            ).fetchall()
        )
        for kind, ids in leads.items()
    }
    assert statuses == {
        "busy": [("FAILED", "busy")] * 3,
        "no_answer_then_busy": [("FAILED", "busy")],
        "busy_timeout": [("FAILED", "busy")] * 2,
        "no_answer": [("FAILED", "no_answer")] * 2,
        "failed": [("FAILED", "failed")] * 2,
        "expired_busy": [("EXPIRED", "busy")] * 2,
        "expired_undialed": [("EXPIRED", None)],
        "completed": [("COMPLETED", "completed")] * 2,
        "old_busy": [("FAILED", "busy")] * 2,
        "retrying": [("BACKLOG", "busy")],
    }
    return leads


def snapshot(conn: psycopg.Connection) -> dict[str, Any]:
    """Every lead row, every attempt row, and the number of lead events."""
    out = {
        "leads": conn.execute("SELECT * FROM leads ORDER BY id").fetchall(),
        "attempts": conn.execute("SELECT * FROM call_attempts ORDER BY id").fetchall(),
        "events": conn.execute("SELECT count(*) AS n FROM lead_events").fetchone()["n"],
    }
    conn.commit()
    return out


def the_number_id(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT id FROM outbound_numbers").fetchone()["id"]


def recover_cli(database_url: str, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(
        app, ["recover", *args, "--json", "--database-url", database_url], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_analysis_groups_and_counts_exactly(
    conn: psycopg.Connection, database_url: str, seeded: dict[str, list[int]]
) -> None:
    out = recover_cli(database_url)
    groups = {(g["status"], g["outcome"], g["last_error"]): g["leads"] for g in out["groups"]}
    assert groups == {
        ("FAILED", "busy", "486 Busy Here"): 6,  # 3 + the one busy on its 2nd call + 2 old
        ("FAILED", "busy", "network timeout"): 2,
        ("FAILED", "no_answer", None): 2,
        ("FAILED", "failed", "SIP 503"): 2,
        ("EXPIRED", "busy", "486 Busy Here"): 2,
        ("EXPIRED", None, None): 1,
    }
    counts = [g["leads"] for g in out["groups"]]
    assert counts == sorted(counts, reverse=True)
    final = [i for k, ids in seeded.items() if k not in ("completed", "retrying") for i in ids]
    assert [lead["id"] for lead in out["leads"]] == sorted(final)

    # Filters narrow the same analysis.
    only_r2 = recover_cli(database_url, "--reseller", "r2", "--status", "EXPIRED")
    assert [lead["id"] for lead in only_r2["leads"]] == seeded["expired_undialed"]
    limited = recover_cli(database_url, "--outcome", "busy", "--limit", "4")
    busy = sorted(
        seeded["busy"]
        + seeded["no_answer_then_busy"]
        + seeded["busy_timeout"]
        + seeded["expired_busy"]
        + seeded["old_busy"]
    )
    assert [lead["id"] for lead in limited["leads"]] == busy[:4]


def test_dry_run_changes_nothing(
    conn: psycopg.Connection, database_url: str, seeded: dict[str, list[int]]
) -> None:
    before = snapshot(conn)
    out = recover_cli(database_url, "--outcome", "busy", "--since", "24h")
    assert snapshot(conn) == before
    assert out["mode"] == "dry_run" and "requeued" not in out
    selected = sorted(
        seeded["busy"] + seeded["no_answer_then_busy"] + seeded["busy_timeout"]
    ) + sorted(seeded["expired_busy"])
    assert sorted(lead["id"] for lead in out["leads"]) == sorted(selected)
    by_id = {lead["id"]: lead for lead in before["leads"]}
    for lead in out["leads"]:
        stored = by_id[lead["id"]]
        assert lead["phone"] == "+*******" + stored["phone"][-4:]
        assert (lead["reseller_id"], lead["status"], lead["outcome"]) == (
            stored["reseller_id"],
            stored["status"],
            stored["outcome"],
        )
        assert lead["updated_at"] == stored["updated_at"].isoformat()

    # The human-readable form: the same leads, phones masked, and nothing changed.
    result = CliRunner().invoke(
        app, ["recover", "--outcome", "busy", "--since", "24h", "--database-url", database_url]
    )
    assert result.exit_code == 0, result.output
    assert "dry run: nothing changed" in result.stdout
    for lead in before["leads"]:
        assert lead["phone"] not in result.stdout
    assert snapshot(conn) == before


def test_execute_requeues_exactly_the_selected_leads_once(
    conn: psycopg.Connection, database_url: str, seeded: dict[str, list[int]]
) -> None:
    before = snapshot(conn)
    out = recover_cli(database_url, "--outcome", "busy", "--since", "24h", "--execute")
    selected = sorted(
        seeded["busy"] + seeded["no_answer_then_busy"] + seeded["busy_timeout"]
        + seeded["expired_busy"]
    )  # fmt: skip
    assert out["mode"] == "execute"
    assert out["requeued"] == selected and out["skipped"] == []

    after = snapshot(conn)
    old = {lead["id"]: lead for lead in before["leads"]}
    for lead in after["leads"]:
        was = old[lead["id"]]
        if lead["id"] not in selected:
            assert lead == was, lead["id"]
            continue
        assert lead["status"] == "BACKLOG"
        assert lead["max_attempts"] == was["attempt_count"] + 1
        assert lead["attempt_count"] == was["attempt_count"] and lead["expires_at"] is None
        assert lead["fence"] == was["fence"] + 1
        assert lead["next_attempt_at"] <= lead["updated_at"]  # due now
    assert after["attempts"] == before["attempts"]
    assert after["events"] == before["events"] + len(selected)
    events = conn.execute(
        "SELECT lead_id, from_status, to_status FROM lead_events"
        " WHERE reason = 'recovered' ORDER BY lead_id"
    ).fetchall()
    conn.commit()
    assert [e["lead_id"] for e in events] == selected
    assert all(e["to_status"] == "BACKLOG" for e in events)
    assert {e["lead_id"] for e in events if e["from_status"] == "EXPIRED"} == set(
        seeded["expired_busy"]
    )

    # A second run finds nothing left to do.
    again = recover_cli(database_url, "--outcome", "busy", "--since", "24h", "--execute")
    assert again["leads"] == [] and again["requeued"] == [] and again["skipped"] == []
    assert snapshot(conn) == after


def test_a_lead_changed_after_selection_is_skipped(
    conn: psycopg.Connection, database_url: str, seeded: dict[str, list[int]]
) -> None:
    report = recovery.analyse(database_url, recovery.Filters(outcomes=("failed",)))
    assert [c.id for c in report.candidates] == seeded["failed"]
    first, second = seeded["failed"]
    # Between our listing and our execute, another operator recovers `first` and its new
    # call fails again: FAILED as listed, but not the lead we showed, so it is skipped.
    assert lifecycle.requeue(conn, [first]) == [first]
    (claimed,) = lifecycle.claim(conn, "r2", 1, lease_s=30)
    assert claimed.lead_id == first
    attempt = NewAttempt(uuid.uuid4(), the_number_id(conn), NUMBER, "simulator")
    assert lifecycle.start_dialing(conn, first, claimed.fence, attempt)
    ended = lifecycle.end_call(conn, attempt.id, "failed", error="SIP 500")
    assert ended is not None and ended.lead_status == "FAILED"
    conn.commit()
    recovery.execute(database_url, report, extra_attempts=3)
    assert (report.requeued, report.skipped) == ([second], [first])
    rows = conn.execute(
        "SELECT l.id, l.status, l.max_attempts, l.attempt_count,"
        " (SELECT count(*) FROM lead_events e WHERE e.lead_id = l.id"
        "  AND e.reason = 'recovered') AS recovered"
        " FROM leads l WHERE id = ANY(%s) ORDER BY id",
        (seeded["failed"],),
    ).fetchall()
    conn.commit()
    assert [(r["id"], r["status"], r["recovered"]) for r in rows] == [
        (first, "FAILED", 1),  # only the other operator's
        (second, "BACKLOG", 1),
    ]
    assert rows[1]["max_attempts"] == rows[1]["attempt_count"] + 3


def test_refused_filters_exit_1(database_url: str) -> None:
    for args in (["--since", "24"], ["--status", "COMPLETED"], ["--outcome", "bogus"]):
        result = CliRunner().invoke(app, ["recover", *args, "--database-url", database_url])
        assert result.exit_code == 1, args
        assert "error:" in result.stderr
    assert recovery.parse_duration("30m") == dt.timedelta(minutes=30)
    assert recovery.parse_duration("24h") == dt.timedelta(hours=24)
    assert recovery.parse_duration("7d") == dt.timedelta(days=7)
    with pytest.raises(recovery.RecoverError):
        recovery.parse_duration("0h")
