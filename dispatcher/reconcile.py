"""Repairs the scheduler runs in the background, each under an advisory lock so that two
schedulers never run the same one at once.

- expired leases: QUEUED leads whose dispatch never started go back to BACKLOG;
- silent calls: attempts with no final status are looked up at the provider and ended;
- channel slots: each number's semaphore is rebuilt from PostgreSQL's in-flight attempts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog
from psycopg import Connection

from dispatcher import lifecycle, metrics, wakeup
from dispatcher.callbacks import apply_status
from dispatcher.lifecycle import CallEnded
from dispatcher.runtime import Runtime

log = structlog.get_logger(__name__)

# Advisory lock keys, one per reconciler (arbitrary, stable constants).
LOCK_LEASES = 727_001
LOCK_CALLS = 727_002
LOCK_CHANNELS = 727_003
# An attempt with no provider call id this old had its dispatcher die mid-dial.
UNPLACED_AFTER_S = 5.0


@dataclass
class Repairs:
    leases_expired: int = 0
    calls_ended: int = 0
    slots_added: int = 0
    slots_removed: int = 0


def run_all(rt: Runtime) -> Repairs:
    repairs = Repairs()
    repairs.leases_expired = _locked(rt, LOCK_LEASES, lambda c: len(lifecycle.expire_leases(c)))
    repairs.calls_ended = end_silent_calls(rt)
    added, removed = rebuild_channels(rt)
    repairs.slots_added, repairs.slots_removed = added, removed
    metrics.repairs(repairs.leases_expired, repairs.calls_ended, added, removed)
    if repairs.leases_expired or repairs.calls_ended or added or removed:
        log.info("reconciled", **{k: v for k, v in vars(repairs).items() if v})
    return repairs


def _locked(rt: Runtime, key: int, work: Callable[[Connection], int]) -> int:
    with rt.pool.connection() as conn, conn.transaction():
        got = conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS got", (key,)).fetchone()
        if not got or not got["got"]:
            return 0
        return work(conn)


def end_silent_calls(rt: Runtime) -> int:
    """End attempts that will get no final callback: unplaced ones whose dispatcher died,
    and placed ones past the longest call (their final callback was lost).

    Each call is settled in its own transaction, and its channel released only after that
    commits; a session-level advisory lock keeps two schedulers from doing it at once
    without holding one transaction open across the provider lookups."""
    ended = 0
    with rt.pool.connection() as conn:
        got = conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (LOCK_CALLS,)).fetchone()
        conn.commit()
        if not got or not got["got"]:
            return 0
        try:
            rows = conn.execute(
                """
                SELECT a.id, a.lead_id, a.provider, a.provider_call_id, a.number_id
                FROM call_attempts a
                WHERE a.ended_at IS NULL AND (
                    (a.provider_call_id IS NULL
                        AND a.started_at < now() - make_interval(secs => %s))
                    OR a.started_at < now() - make_interval(secs => %s))
                ORDER BY a.started_at
                LIMIT 500
                """,
                (UNPLACED_AFTER_S, rt.settings.max_call_s + rt.settings.call_grace_s),
            ).fetchall()
            conn.commit()
            for row in rows:
                with conn.transaction():
                    # A live dispatcher holds the lead's lock while it dials: skip those.
                    locked = conn.execute(
                        "SELECT id FROM leads WHERE id = %s FOR UPDATE SKIP LOCKED",
                        (row["lead_id"],),
                    ).fetchone()
                    result = None if locked is None else _end_silent_call(conn, rt, row)
                if result is not None:
                    rt.channels.release(result.number_id, str(result.attempt_id))
                    metrics.call_ended(result)
                    ended += 1
            if ended:
                wakeup.channel_freed(rt)
        finally:
            conn.rollback()
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_CALLS,))
            conn.commit()
    return ended


def _end_silent_call(conn: Connection, rt: Runtime, row: dict) -> CallEnded | None:
    attempt = conn.execute(
        "SELECT provider_call_id, ended_at FROM call_attempts WHERE id = %s", (row["id"],)
    ).fetchone()
    if attempt is None or attempt["ended_at"] is not None:
        return None
    try:
        status = rt.provider(row["provider"]).fetch_call(row["id"], attempt["provider_call_id"])
    except Exception as exc:  # the provider is down: try again on the next pass
        log.warning("provider_lookup_failed", attempt_id=str(row["id"]), error=str(exc))
        return None
    if status is None:
        if attempt["provider_call_id"] is None:
            return lifecycle.end_call(conn, row["id"], "failed", error="never placed")
        return lifecycle.end_call(conn, row["id"], "unknown", error="provider lost the call")
    if attempt["provider_call_id"] is None:
        lifecycle.mark_in_call(conn, row["lead_id"], row["id"], status.call_id)
    if status.final:
        return apply_status(conn, status)
    if attempt["provider_call_id"] is None:
        return None  # placed and still up: now IN_CALL, its callbacks will end it
    return lifecycle.end_call(conn, row["id"], "unknown", error="no final status from provider")


def rebuild_channels(rt: Runtime) -> tuple[int, int]:
    """Make every number's slot set equal PostgreSQL's in-flight attempts."""
    with rt.pool.connection() as conn, conn.transaction():
        got = conn.execute(
            "SELECT pg_try_advisory_xact_lock(%s) AS got", (LOCK_CHANNELS,)
        ).fetchone()
        if not got or not got["got"]:
            return 0, 0
        rows = conn.execute(
            """
            SELECT n.id, coalesce(array_agg(a.id::text) FILTER (WHERE a.id IS NOT NULL), '{}')
                AS in_flight
            FROM outbound_numbers n
            LEFT JOIN call_attempts a ON a.number_id = n.id AND a.ended_at IS NULL
            GROUP BY n.id
            """
        ).fetchall()
    added = removed = 0
    for row in rows:
        a, r = rt.channels.rebuild(row["id"], row["in_flight"])
        added, removed = added + a, removed + r
    return added, removed
