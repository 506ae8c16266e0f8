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

from db.models import LEAD_STATUSES
from dispatcher import policy, shadow_hook

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
    rows = conn.execute(sql, args).fetchall()
    shadow_hook.changed(rows)  # the shadow ZSET schedule's copy (no-op when shadow is off)
    return rows


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
    import msgspec
    from psycopg.rows import tuple_row  # only here: the rest of the module uses dict rows

    # One round trip, one parameter: the leads go as one JSON array of objects (encoded
    # by msgspec in C: per-element array dumping in psycopg cost more than the INSERT
    # itself), read back by json_to_recordset in input order (WITH ORDINALITY); ids are
    # drawn in the statement, and every input row comes back with its id, inserted or not.
    names = [name for name, _ in _NEW_LEAD_COLUMNS if name not in ("id", "status", "reason")]
    fields = ", ".join(
        [*(f"{name} {typ}" for name, typ in _NEW_LEAD_COLUMNS if name in names), "skip_reason text"]
    )
    sql = f"""
        WITH seq AS (
            SELECT pg_get_serial_sequence('leads', 'id')::regclass AS seq
        ), src AS MATERIALIZED (
            SELECT nextval(seq.seq) AS id, s.*,
                CASE WHEN s.skip_reason IS NULL THEN 'BACKLOG' ELSE 'SKIPPED' END AS status,
                coalesce(s.skip_reason, 'created') AS reason
            FROM seq, ROWS FROM (json_to_recordset(%s::json) AS ({fields}))
                WITH ORDINALITY AS s({", ".join(names)}, skip_reason, ord)
        ), ins AS (
            INSERT INTO leads (id, status, {", ".join(names)})
            SELECT id, status, {", ".join(names)} FROM src
            ON CONFLICT (reseller_id, idempotency_key) WHERE idempotency_key IS NOT NULL
            DO NOTHING
            RETURNING id, status, next_attempt_at
        ), ev AS (
            INSERT INTO lead_events (lead_id, from_status, to_status, reason)
            SELECT ins.id, NULL, ins.status, src.reason FROM ins JOIN src ON src.id = ins.id
        )
        SELECT src.id, ins.status, ins.next_attempt_at <= now()
        FROM src LEFT JOIN ins ON ins.id = src.id
        ORDER BY src.ord
    """
    with conn.cursor(row_factory=tuple_row) as cur:
        out = cur.execute(sql, (msgspec.json.encode(leads).decode(),)).fetchall()
    ids = [lead_id for lead_id, _, _ in out]
    inserted = {
        lead_id: {"id": lead_id, "status": status, "due": due}
        for lead_id, status, due in out
        if status is not None
    }
    if any(r["status"] == "BACKLOG" and r["due"] for r in inserted.values()):
        notify(conn)
    shadow_hook.created(ids, leads, inserted)  # the shadow ZSET schedule's copy
    return [lead_id if lead_id in inserted else None for lead_id in ids]


# --- the schedule ---------------------------------------------------------------------


# The highest-priority-first pick, one index range per priority: in
# leads_claim_idx (reseller, priority DESC, next_attempt_at, id) `next_attempt_at <= now()`
# bounds a range only under an exact priority, so ordering by priority over the whole
# index would read every future-dated lead of a higher priority first (measured: 500k
# index entries read for 500 due rows with 1M future leads). ARRAY(...) runs once.
_BY_PRIORITY = """
    id = ANY(ARRAY(
        SELECT c.id FROM generate_series(10, 1, -1) AS p(priority),
        LATERAL (
            SELECT id, next_attempt_at FROM leads
            WHERE status = 'BACKLOG' AND reseller_id = %(reseller_id)s
              AND priority = p.priority AND next_attempt_at <= now()
            ORDER BY next_attempt_at, id LIMIT %(limit)s
        ) c
        ORDER BY p.priority DESC, c.next_attempt_at, c.id LIMIT %(limit)s
    ))
"""


def claim(
    conn: Connection, reseller_id: str, limit: int, lease_s: float, *, oldest_first: bool = False
) -> list[Claimed]:
    """Move up to `limit` of a reseller's due leads BACKLOG → QUEUED, highest priority
    first (or oldest first); each gets a lease and a new fence, so that a message from an
    older claim is recognised as stale."""
    if limit <= 0:
        return []
    if oldest_first:
        where = "reseller_id = %(reseller_id)s AND next_attempt_at <= now()"
        order_limit = "ORDER BY next_attempt_at, id LIMIT %(limit)s"
    else:
        where, order_limit = _BY_PRIORITY, ""
    rows = _transition(
        conn,
        where=where,
        order_limit=order_limit,
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
    rows = lock_queued_many(conn, [(lead_id, fence)])
    return rows[0] if rows else None


def lock_queued_many(conn: Connection, claims: Sequence[tuple[int, int]]) -> list[Row]:
    """`lock_queued` for a batch in one statement: the leads whose fence is still current,
    locked in id order (every batch locks in the same order, so two never deadlock)."""
    if not claims:
        return []
    return conn.execute(
        """
        SELECT l.*, t.calling_window, t.retry, t.frequency_cap, now() AS db_now
        FROM leads l JOIN templates t ON t.name = l.template
        JOIN unnest(%s::bigint[], %s::bigint[]) AS c(id, fence)
            ON c.id = l.id AND c.fence = l.fence
        WHERE l.status = 'QUEUED'
        ORDER BY l.id
        FOR UPDATE OF l
        """,
        ([c[0] for c in claims], [c[1] for c in claims]),
    ).fetchall()


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


def finish_unattempted_many(
    conn: Connection, claims: Sequence[tuple[int, int]], status: str, reason: str
) -> list[Row]:
    """QUEUED → EXPIRED or SKIPPED for many (lead id, fence) claims in one statement (a
    batch message's leads); each lead changes only while that fence is its current claim.
    The leads are locked in id order. Returns the rows that changed."""
    assert status in ("EXPIRED", "SKIPPED"), status
    if not claims:
        return []
    return _transition(
        conn,
        where="(id, fence) IN (SELECT * FROM unnest(%(ids)s::bigint[], %(fences)s::bigint[]))",
        params={"ids": [c[0] for c in claims], "fences": [c[1] for c in claims]},
        from_=("QUEUED",),
        to=status,
        reason=reason,
        set_sql=", lease_expires_at = NULL",
        order_limit="ORDER BY id",
    )


def start_dialing(conn: Connection, lead_id: int, fence: int, attempt: NewAttempt) -> Row | None:
    """QUEUED → DIALING and the attempt's row: the attempt exists before any provider is
    asked to call, so a crash after dialing is visible, never re-dialed."""
    rows = start_dialing_many(conn, [(lead_id, fence, attempt)])
    return rows[0] if rows else None


def start_dialing_many(
    conn: Connection, starts: Sequence[tuple[int, int, NewAttempt]]
) -> list[Row]:
    """`start_dialing` for a batch: one guarded transition and one attempts insert, each
    lead only if its fence is still current. Returns the leads that changed."""
    if not starts:
        return []
    ids = [s[0] for s in starts]
    rows = _transition(
        conn,
        where="(id, fence) IN (SELECT * FROM unnest(%(ids)s::bigint[], %(fences)s::bigint[]))",
        params={
            "ids": ids,
            "fences": [s[1] for s in starts],
            "attempts": [s[2].id for s in starts],
        },
        from_=("QUEUED",),
        to="DIALING",
        reason="dialing",
        set_sql=", lease_expires_at = NULL, attempt_count = l.attempt_count + 1,"
        " current_attempt_id = (%(attempts)s::uuid[])[array_position(%(ids)s::bigint[], l.id)]",
        attempt_sql="current_attempt_id",
    )
    if not rows:
        return []
    by_lead = {s[0]: s[2] for s in starts}
    attempts = [by_lead[r["id"]] for r in rows]
    conn.execute(
        """
        INSERT INTO call_attempts
            (id, lead_id, attempt_no, reseller_id, phone, number_id, number, provider, due_at)
        SELECT * FROM unnest(%s::uuid[], %s::bigint[], %s::int[], %s::text[], %s::text[],
                             %s::bigint[], %s::text[], %s::text[], %s::timestamptz[])
        """,
        (
            [a.id for a in attempts],
            [r["id"] for r in rows],
            [r["attempt_count"] for r in rows],
            [r["reseller_id"] for r in rows],
            [r["phone"] for r in rows],
            [a.number_id for a in attempts],
            [a.number for a in attempts],
            [a.provider for a in attempts],
            [r["next_attempt_at"] for r in rows],
        ),
    )
    return rows


def lock_dialing(conn: Connection, lead_id: int, attempt_id: uuid.UUID) -> Row | None:
    """The lead, locked, while it is still DIALING this attempt (a cancel has not won)."""
    rows = lock_dialing_many(conn, [(lead_id, attempt_id)])
    return rows[0] if rows else None


def lock_dialing_many(conn: Connection, dials: Sequence[tuple[int, uuid.UUID]]) -> list[Row]:
    """`lock_dialing` for a batch, in id order like `lock_queued_many`."""
    if not dials:
        return []
    return conn.execute(
        """
        SELECT l.* FROM leads l
        JOIN unnest(%s::bigint[], %s::uuid[]) AS d(id, attempt_id)
            ON d.id = l.id AND d.attempt_id = l.current_attempt_id
        WHERE l.status = 'DIALING'
        ORDER BY l.id
        FOR UPDATE OF l
        """,
        ([d[0] for d in dials], [d[1] for d in dials]),
    ).fetchall()


def mark_in_call(
    conn: Connection, lead_id: int, attempt_id: uuid.UUID, provider_call_id: str
) -> bool:
    """DIALING → IN_CALL once the provider accepted the call."""
    return bool(mark_in_call_many(conn, [(lead_id, attempt_id, provider_call_id)]))


def mark_in_call_many(conn: Connection, placed: Sequence[tuple[int, uuid.UUID, str]]) -> list[int]:
    """`mark_in_call` for a batch: the provider's call ids on the attempts, then one
    guarded transition. Returns the lead ids that changed."""
    if not placed:
        return []
    ids, attempts = [p[0] for p in placed], [p[1] for p in placed]
    conn.execute(
        """
        UPDATE call_attempts a SET provider_call_id = p.call_id,
            placed_at = coalesce(a.placed_at, now())
        FROM unnest(%s::uuid[], %s::text[]) AS p(id, call_id) WHERE a.id = p.id
        """,
        (attempts, [p[2] for p in placed]),
    )
    rows = _transition(
        conn,
        where="(id, current_attempt_id) IN"
        " (SELECT * FROM unnest(%(ids)s::bigint[], %(attempts)s::uuid[]))",
        params={"ids": ids, "attempts": attempts},
        from_=("DIALING",),
        to="IN_CALL",
        reason="provider_accepted",
        attempt_sql="current_attempt_id",
    )
    return [r["id"] for r in rows]


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
    # One statement finds the open attempt and locks its lead (the lead before the
    # attempt: the order every writer of both follows).
    lead = conn.execute(
        """
        SELECT l.id, l.status, l.current_attempt_id, l.attempt_count, l.max_attempts,
               l.phone, l.timezone, l.execution_mode, l.expires_at, l.alert_ref,
               t.retry, t.calling_window, now() AS db_now
        FROM call_attempts a
        JOIN leads l ON l.id = a.lead_id JOIN templates t ON t.name = l.template
        WHERE a.id = %s AND a.ended_at IS NULL
        FOR UPDATE OF l
        """,
        (attempt_id,),
    ).fetchone()
    if lead is None:
        return None
    # The caller releases the channel slot and wakes the schedulers after the commit
    # (`wakeup.channel_freed`): a NOTIFY here would serialise every call end's commit.
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
    if lead["status"] not in ("DIALING", "IN_CALL") or lead["current_attempt_id"] != attempt_id:
        lead = None
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
