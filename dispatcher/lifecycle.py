"""Every change of a lead's status, and nothing else, lives here.

Each change is one guarded SQL statement: it updates the lead only when the lead is in
an expected status (and, where it matters, holds the expected fence or attempt), appends
a `lead_events` row in the same statement, and returns what it changed. Callers own the
transaction; a change that returns nothing did not happen and must not be acted on.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb

from db.models import LEAD_STATUSES
from dispatcher import policy

NOTIFY_CHANNEL = "switchboard_wakeup"
_rng = random.SystemRandom()  # retry jitter
ACTIVE = ("QUEUED", "DIALING", "IN_CALL")
FINAL = ("COMPLETED", "FAILED", "EXPIRED", "SKIPPED", "CANCELLED")
CANCELLABLE = ("BACKLOG", "QUEUED", "DIALING")

Row = dict[str, Any]


@dataclass(frozen=True)
class NewLead:
    reseller_id: str
    phone: str
    template: str
    next_attempt_at: dt.datetime
    execution_mode: str = "telephony"
    merchant_id: str | None = None
    customer_name: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    priority: int = 5
    timezone: str | None = None
    not_before: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    max_attempts: int | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    # Set when the lead must not be dialed at all (do-not-call, invalid): it ends SKIPPED.
    skip_reason: str | None = None
    alert_ref: int | None = None  # the alert this lead calls for


@dataclass(frozen=True)
class Claimed:
    lead_id: int
    fence: int
    due_at: dt.datetime


@dataclass(frozen=True)
class NewAttempt:
    id: uuid.UUID
    number_id: int
    number: str
    provider: str


@dataclass(frozen=True)
class CallEnded:
    """What ending a call changed: the attempt always, the lead when it still held it."""

    attempt_id: uuid.UUID
    lead_id: int
    number_id: int
    outcome: str
    lead_status: str | None  # None: the lead had moved on (cancelled); only the attempt ended
    next_attempt_at: dt.datetime | None = None


def notify(conn: Connection) -> None:
    """Wake the schedulers: a lead became due or a channel was freed (sent on commit)."""
    conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))


def _transition(
    conn: Connection,
    *,
    where: str,
    params: dict[str, Any],
    from_: Sequence[str],
    to: str,
    reason: str,
    set_sql: str = "",
    attempt_sql: str = "NULL::uuid",
    lock: str = "FOR UPDATE",
    order_limit: str = "",
) -> list[Row]:
    """The one guarded update behind every status change, with its audit row.

    The rows to change are picked and locked once, in a MATERIALIZED CTE, so that a
    LIMIT with SKIP LOCKED is evaluated exactly once."""
    # Literal statuses (constants of this module, never input) let the planner prove
    # the partial index's predicate even in a generic plan.
    assert set(from_) <= set(LEAD_STATUSES) and to in LEAD_STATUSES, (from_, to)
    statuses = ", ".join(f"'{s}'" for s in from_)
    sql = f"""
        WITH old AS MATERIALIZED (
            SELECT id, status FROM leads
            WHERE status IN ({statuses}) AND {where}
            {order_limit}
            {lock}
        ), upd AS (
            UPDATE leads l SET status = %(to)s, updated_at = now() {set_sql}
            FROM old WHERE l.id = old.id
            RETURNING l.*, old.status AS from_status
        ), ev AS (
            INSERT INTO lead_events (lead_id, from_status, to_status, reason, attempt_id)
            SELECT id, from_status, status, %(reason)s, {attempt_sql} FROM upd
        )
        SELECT * FROM upd
    """
    args = {**params, "to": to, "reason": reason}
    return conn.execute(sql, args).fetchall()


# --- creation -------------------------------------------------------------------------

_NEW_LEAD_COLUMNS = (
    ("id", "bigint"),
    ("reseller_id", "text"),
    ("merchant_id", "text"),
    ("phone", "text"),
    ("template", "text"),
    ("execution_mode", "text"),
    ("customer_name", "text"),
    ("payload", "jsonb"),
    ("priority", "smallint"),
    ("timezone", "text"),
    ("not_before", "timestamptz"),
    ("expires_at", "timestamptz"),
    ("max_attempts", "smallint"),
    ("idempotency_key", "text"),
    ("request_hash", "text"),
    ("status", "text"),
    ("next_attempt_at", "timestamptz"),
    ("alert_ref", "bigint"),
    ("reason", "text"),
)


def create_leads(conn: Connection, leads: Sequence[NewLead]) -> list[int | None]:
    """Insert leads in one statement; ids in input order, None where the idempotency key
    already named a lead of the same reseller (the caller resolves those)."""
    if not leads:
        return []
    ids = [
        r["id"]
        for r in conn.execute(
            "SELECT nextval(pg_get_serial_sequence('leads', 'id')) AS id"
            " FROM generate_series(1, %s)",
            (len(leads),),
        ).fetchall()
    ]
    columns: dict[str, list[Any]] = {name: [] for name, _ in _NEW_LEAD_COLUMNS}
    for lead_id, lead in zip(ids, leads, strict=True):
        values = {
            **{name: getattr(lead, name, None) for name, _ in _NEW_LEAD_COLUMNS},
            "id": lead_id,
            "payload": Jsonb(lead.payload),
            "status": "SKIPPED" if lead.skip_reason else "BACKLOG",
            "reason": lead.skip_reason or "created",
        }
        for name, _ in _NEW_LEAD_COLUMNS:
            columns[name].append(values[name])
    names = [name for name, _ in _NEW_LEAD_COLUMNS if name != "reason"]
    unnest = ", ".join(f"%({name})s::{typ}[]" for name, typ in _NEW_LEAD_COLUMNS)
    sql = f"""
        WITH src AS (
            SELECT * FROM unnest({unnest}) AS s({", ".join(n for n, _ in _NEW_LEAD_COLUMNS)})
        ), ins AS (
            INSERT INTO leads ({", ".join(names)})
            SELECT {", ".join(names)} FROM src
            ON CONFLICT (reseller_id, idempotency_key) WHERE idempotency_key IS NOT NULL
            DO NOTHING
            RETURNING id, status, next_attempt_at
        ), ev AS (
            INSERT INTO lead_events (lead_id, from_status, to_status, reason)
            SELECT ins.id, NULL, ins.status, src.reason FROM ins JOIN src ON src.id = ins.id
        )
        SELECT id, status, next_attempt_at <= now() AS due FROM ins
    """
    inserted = {r["id"]: r for r in conn.execute(sql, columns).fetchall()}
    if any(r["status"] == "BACKLOG" and r["due"] for r in inserted.values()):
        notify(conn)
    return [lead_id if lead_id in inserted else None for lead_id in ids]


# --- the schedule ---------------------------------------------------------------------


def claim(
    conn: Connection, reseller_id: str, limit: int, lease_s: float, *, oldest_first: bool = False
) -> list[Claimed]:
    """Move up to `limit` of a reseller's due leads BACKLOG → QUEUED, highest priority
    first (or oldest first); each gets a lease and a new fence, so that a message from an
    older claim is recognised as stale."""
    if limit <= 0:
        return []
    order = "next_attempt_at, id" if oldest_first else "priority DESC, next_attempt_at, id"
    rows = _transition(
        conn,
        where="reseller_id = %(reseller_id)s AND next_attempt_at <= now()",
        order_limit=f"ORDER BY {order} LIMIT %(limit)s",
        params={"reseller_id": reseller_id, "limit": limit, "lease_s": lease_s},
        from_=("BACKLOG",),
        to="QUEUED",
        reason="claimed",
        set_sql=", fence = l.fence + 1,"
        " lease_expires_at = now() + make_interval(secs => %(lease_s)s)",
        lock="FOR UPDATE SKIP LOCKED",
    )
    return [Claimed(r["id"], r["fence"], r["next_attempt_at"]) for r in rows]


def expire_leases(conn: Connection) -> list[int]:
    """QUEUED leads whose dispatch never started go back to BACKLOG, due now."""
    rows = _transition(
        conn,
        where="lease_expires_at < now()",
        params={},
        from_=("QUEUED",),
        to="BACKLOG",
        reason="lease_expired",
        set_sql=", fence = l.fence + 1, lease_expires_at = NULL, next_attempt_at = now()",
        lock="FOR UPDATE SKIP LOCKED",
    )
    if rows:
        notify(conn)
    return [r["id"] for r in rows]


# --- dispatch ---------------------------------------------------------------------------


def lock_queued(conn: Connection, lead_id: int, fence: int) -> Row | None:
    """The claimed lead with its template, locked, if `fence` is still the current claim."""
    return conn.execute(
        """
        SELECT l.*, t.calling_window, t.retry, t.frequency_cap, now() AS db_now
        FROM leads l JOIN templates t ON t.name = l.template
        WHERE l.id = %s AND l.fence = %s AND l.status = 'QUEUED'
        FOR UPDATE OF l
        """,
        (lead_id, fence),
    ).fetchone()


def defer(conn: Connection, lead_id: int, fence: int, until: dt.datetime, reason: str) -> bool:
    """QUEUED → BACKLOG without an attempt (no channel, paused, outside hours, ...)."""
    rows = _transition(
        conn,
        where="id = %(id)s AND fence = %(fence)s",
        params={"id": lead_id, "fence": fence, "until": until},
        from_=("QUEUED",),
        to="BACKLOG",
        reason=reason,
        set_sql=", lease_expires_at = NULL, next_attempt_at = %(until)s",
    )
    return bool(rows)


def finish_unattempted(
    conn: Connection, lead_id: int, fence: int, status: str, reason: str
) -> bool:
    """QUEUED → EXPIRED or SKIPPED: the lead ends without being dialed."""
    assert status in ("EXPIRED", "SKIPPED"), status
    rows = _transition(
        conn,
        where="id = %(id)s AND fence = %(fence)s",
        params={"id": lead_id, "fence": fence},
        from_=("QUEUED",),
        to=status,
        reason=reason,
        set_sql=", lease_expires_at = NULL",
    )
    return bool(rows)


def start_dialing(conn: Connection, lead_id: int, fence: int, attempt: NewAttempt) -> Row | None:
    """QUEUED → DIALING and the attempt's row, in one statement: the attempt exists before
    any provider is asked to call, so a crash after dialing is visible, never re-dialed."""
    rows = _transition(
        conn,
        where="id = %(id)s AND fence = %(fence)s",
        params={"id": lead_id, "fence": fence, "attempt_id": attempt.id},
        from_=("QUEUED",),
        to="DIALING",
        reason="dialing",
        set_sql=", lease_expires_at = NULL, attempt_count = l.attempt_count + 1,"
        " current_attempt_id = %(attempt_id)s",
        attempt_sql="%(attempt_id)s::uuid",
    )
    if not rows:
        return None
    lead = rows[0]
    conn.execute(
        """
        INSERT INTO call_attempts
            (id, lead_id, attempt_no, reseller_id, phone, number_id, number, provider, due_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
        """,
        (
            attempt.id,
            lead_id,
            lead["attempt_count"],
            lead["reseller_id"],
            lead["phone"],
            attempt.number_id,
            attempt.number,
            attempt.provider,
            lead["next_attempt_at"],
        ),
    )
    return lead


def lock_dialing(conn: Connection, lead_id: int, attempt_id: uuid.UUID) -> Row | None:
    """The lead, locked, while it is still DIALING this attempt (a cancel has not won)."""
    return conn.execute(
        "SELECT * FROM leads WHERE id = %s AND status = 'DIALING' AND current_attempt_id = %s"
        " FOR UPDATE",
        (lead_id, attempt_id),
    ).fetchone()


def mark_in_call(
    conn: Connection, lead_id: int, attempt_id: uuid.UUID, provider_call_id: str
) -> bool:
    """DIALING → IN_CALL once the provider accepted the call."""
    conn.execute(
        "UPDATE call_attempts SET provider_call_id = %s, placed_at = coalesce(placed_at, now())"
        " WHERE id = %s",
        (provider_call_id, attempt_id),
    )
    rows = _transition(
        conn,
        where="id = %(id)s AND current_attempt_id = %(attempt_id)s",
        params={"id": lead_id, "attempt_id": attempt_id},
        from_=("DIALING",),
        to="IN_CALL",
        reason="provider_accepted",
        attempt_sql="%(attempt_id)s::uuid",
    )
    return bool(rows)


def end_call(
    conn: Connection,
    attempt_id: uuid.UUID,
    outcome: str,
    *,
    error: str | None = None,
    duration_s: float | None = None,
    answered_by: str | None = None,
    digits: str | None = None,
) -> CallEnded | None:
    """End an attempt once and apply the template's retry rules to its lead.

    None when the attempt had already ended (a repeated or late final status). Locks
    the lead before the attempt, the order every writer of both follows."""
    found = conn.execute(
        "SELECT lead_id FROM call_attempts WHERE id = %s AND ended_at IS NULL", (attempt_id,)
    ).fetchone()
    if found is None:
        return None
    lead = conn.execute(
        """
        SELECT l.id, l.status, l.current_attempt_id, l.attempt_count, l.max_attempts,
               l.phone, l.timezone, l.execution_mode, l.expires_at, l.alert_ref,
               t.retry, t.calling_window, now() AS db_now
        FROM leads l JOIN templates t ON t.name = l.template
        WHERE l.id = %s
        FOR UPDATE OF l
        """,
        (found["lead_id"],),
    ).fetchone()
    attempt = conn.execute(
        """
        UPDATE call_attempts SET outcome = %s, error = coalesce(%s, error),
            duration_s = coalesce(%s, duration_s), answered_by = coalesce(%s, answered_by),
            digits = coalesce(%s, digits), call_state = 'ended', ended_at = now()
        WHERE id = %s AND ended_at IS NULL
        RETURNING lead_id, number_id, started_at, digits
        """,
        (outcome, error, duration_s, answered_by, digits, attempt_id),
    ).fetchone()
    if attempt is None:
        return None
    if lead is not None and (
        lead["status"] not in ("DIALING", "IN_CALL") or lead["current_attempt_id"] != attempt_id
    ):
        lead = None
    notify(conn)  # a channel is free either way
    if lead is None:
        return CallEnded(attempt_id, attempt["lead_id"], attempt["number_id"], outcome, None)
    status, next_at, reason = _after_call(lead, outcome, attempt["started_at"])
    rows = _transition(
        conn,
        where="id = %(id)s AND current_attempt_id = %(attempt_id)s",
        params={"id": lead["id"], "attempt_id": attempt_id, "outcome": outcome, "at": next_at},
        from_=("DIALING", "IN_CALL"),
        to=status,
        reason=reason,
        set_sql=", outcome = %(outcome)s, current_attempt_id = NULL"
        + (", next_attempt_at = %(at)s" if next_at is not None else ""),
        attempt_sql="%(attempt_id)s::uuid",
    )
    row = rows[0]
    if lead["alert_ref"] is not None:
        from dispatcher import escalation  # alerts build on the lifecycle, not the reverse

        escalation.after_call(
            conn,
            lead["alert_ref"],
            row["id"],
            attempt_id,
            outcome,
            attempt["digits"],
            row["status"],
        )
    return CallEnded(
        attempt_id,
        row["id"],
        attempt["number_id"],
        outcome,
        row["status"],
        row["next_attempt_at"] if row["status"] == "BACKLOG" else None,
    )


def _after_call(
    lead: Row, outcome: str, started_at: dt.datetime
) -> tuple[str, dt.datetime | None, str]:
    """(status, next attempt time, reason) by the template's retry rules, the calling
    window and the lead's expiry."""
    retry = lead["retry"]
    step = policy.after_call(
        outcome,
        lead["attempt_count"],
        policy.max_attempts_for(lead["max_attempts"], retry),
        retry,
        _rng,
    )
    reason = f"call_{outcome}"
    if step.status != "BACKLOG":
        return step.status, None, reason
    earliest = policy.retry_earliest(retry, lead["db_now"], step.delay_s or 0.0, started_at)
    window = policy.window_for(lead["execution_mode"], lead["calling_window"])
    next_at = policy.first_call_time(window, lead["timezone"], lead["phone"], earliest)
    if next_at is None or (lead["expires_at"] is not None and next_at >= lead["expires_at"]):
        return "EXPIRED", None, f"{reason}_no_time_left"
    return "BACKLOG", next_at, reason


# --- cancel -----------------------------------------------------------------------------


def cancel(conn: Connection, lead_id: int, reason: str = "cancelled") -> Row | None:
    """BACKLOG, QUEUED or DIALING → CANCELLED; the fence moves so no message of an older
    claim can dial it. None when the lead was in another status (the caller says why)."""
    rows = _transition(
        conn,
        where="id = %(id)s",
        params={"id": lead_id},
        from_=CANCELLABLE,
        to="CANCELLED",
        reason=reason,
        set_sql=", fence = l.fence + 1, lease_expires_at = NULL",
    )
    return rows[0] if rows else None


def skip_listed(conn: Connection, phones: Sequence[str], reseller_id: str | None) -> list[int]:
    """Waiting leads (BACKLOG) of numbers just put on a do-not-call list end SKIPPED.

    `reseller_id` None is the global list (every reseller's leads). Leads already claimed
    are caught by the dispatcher's own check just before dialing."""
    rows = _transition(
        conn,
        where="phone = ANY(%(phones)s)"
        " AND (%(reseller)s::text IS NULL OR reseller_id = %(reseller)s)",
        params={"phones": list(phones), "reseller": reseller_id},
        from_=("BACKLOG",),
        to="SKIPPED",
        reason="do_not_call",
    )
    return [r["id"] for r in rows]


def requeue(
    conn: Connection, lead_ids: Sequence[int], extra_attempts: int = 1, reason: str = "recovered"
) -> list[int]:
    """FAILED or EXPIRED leads back to BACKLOG, due now, with `extra_attempts` more calls
    allowed: an operator's recovery after an outage, the one way out of those two final
    states, audited like every change. Returns the ids that changed; a lead changes once
    however often it is named."""
    rows = _transition(
        conn,
        where="id = ANY(%(ids)s)",
        params={"ids": list(lead_ids), "extra": extra_attempts},
        from_=("FAILED", "EXPIRED"),
        to="BACKLOG",
        reason=reason,
        set_sql=", next_attempt_at = now(), expires_at = NULL, fence = l.fence + 1,"
        " max_attempts = least(l.attempt_count + %(extra)s, 20)",
    )
    if rows:
        notify(conn)
    return [r["id"] for r in rows]
