"""Provider status callbacks → the attempt's call state and, on a final status, the lead.

Each event applies once (its id is recorded in the same transaction), the call state
only moves forward, and the channel slot is released after the end is committed.
"""

from __future__ import annotations

import uuid

import structlog
from psycopg import Connection

from dispatcher import lifecycle, metrics, wakeup
from dispatcher.lifecycle import CallEnded
from dispatcher.runtime import Runtime
from dispatcher.telephony.base import FINAL_RANK, PROGRESS_RANK, CallEvent, outcome_for

log = structlog.get_logger(__name__)

_STATE_RANK = {"created": -1, **PROGRESS_RANK, "ended": FINAL_RANK}


def apply_event(rt: Runtime, provider: str, event: CallEvent) -> bool:
    """Apply one callback; False when this event id was already applied."""
    with rt.pool.connection() as conn, conn.transaction():
        fresh = conn.execute(
            "INSERT INTO webhook_events (provider, event_id) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            (provider, event.event_id),
        ).fetchone()
        if fresh is None:
            return False
        ended = apply_status(conn, event)
    if ended is not None:
        rt.channels.release(ended.number_id, str(ended.attempt_id))
        wakeup.channel_freed(rt)
        metrics.call_ended(ended)
        log.info(
            "call_ended",
            lead_id=ended.lead_id,
            attempt_id=str(ended.attempt_id),
            outcome=ended.outcome,
            lead_status=ended.lead_status,
        )
    return True


def apply_status(conn: Connection, event: CallEvent) -> CallEnded | None:
    """Move the attempt's call state forward; end the call on a final status.

    Shared by the webhook and the reconciler that asks providers about silent calls."""
    outcome = outcome_for(event.status, event.answered_by) if event.final else ""
    if event.final and event.attempt_id is not None:
        # The common case needs no lookup: end_call finds the open attempt itself.
        ended = _end(conn, event.attempt_id, event, outcome)
        if ended is not None:
            return ended
    attempt = _find_attempt(conn, event)
    if attempt is None:
        log.warning("callback_for_unknown_call", call_id=event.call_id)
        return None
    attempt_id: uuid.UUID = attempt["id"]
    if event.final:
        return None if attempt_id == event.attempt_id else _end(conn, attempt_id, event, outcome)
    earlier = [s for s, rank in _STATE_RANK.items() if rank < event.rank]
    conn.execute(
        """
        UPDATE call_attempts SET call_state = %s,
            provider_call_id = coalesce(provider_call_id, %s),
            digits = coalesce(%s, digits), answered_by = coalesce(%s, answered_by),
            answered_at = CASE WHEN %s THEN coalesce(answered_at, now()) ELSE answered_at END
        WHERE id = %s AND ended_at IS NULL AND call_state = ANY(%s)
        """,
        (
            event.status,
            event.call_id,
            event.digits,
            event.answered_by,
            event.status == "in-progress",
            attempt_id,
            earlier,
        ),
    )
    return None


def _end(
    conn: Connection, attempt_id: uuid.UUID, event: CallEvent, outcome: str
) -> CallEnded | None:
    return lifecycle.end_call(
        conn,
        attempt_id,
        outcome,
        duration_s=event.duration_s,
        answered_by=event.answered_by,
        digits=event.digits,
    )


def _find_attempt(conn: Connection, event: CallEvent) -> dict | None:
    if event.attempt_id is not None:
        row = conn.execute(
            "SELECT id FROM call_attempts WHERE id = %s", (event.attempt_id,)
        ).fetchone()
        if row is not None:
            return row
    return conn.execute(
        "SELECT id FROM call_attempts WHERE provider_call_id = %s", (event.call_id,)
    ).fetchone()
