"""Where the shadow's observations and events go: memory first, then PostgreSQL in batches.

Nothing here runs inside a real transaction: callers append to a buffer (a lock and a
list append) and a background thread COPYs the buffers out every ~200 ms and at exit.
PostgreSQL being slow or down costs the shadow data (bounded buffers; drops are logged
and counted), never the real path its latency.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Sequence
from typing import Any

import structlog
from psycopg import Connection

log = structlog.get_logger(__name__)

# shadow_events.kind: the fixed vocabulary the parity report reads.
DUAL_WRITE_FAILED = "dual_write_failed"  # lead_id; detail {op, error}
REDIS_ERROR = "redis_error"  # detail {where, error}
PROMOTER_ACQUIRED = "promoter_acquired"  # detail {holder, gap_ms}
PROMOTER_LOST = "promoter_lost"  # detail {holder}
REDIS_FLUSHED = "redis_flushed"  # detail {detected_by}
RECONCILE_READDED = "reconcile_readded"  # lead_id; detail {attempt_no}
REAPED = "reaped"  # lead_id
EVENT_KINDS = (
    DUAL_WRITE_FAILED,
    REDIS_ERROR,
    PROMOTER_ACQUIRED,
    PROMOTER_LOST,
    REDIS_FLUSHED,
    RECONCILE_READDED,
    REAPED,
)

MAX_BUFFERED = 200_000  # per buffer; past it the oldest rows are dropped (and logged)

Observation = tuple[str, int, int, str, dt.datetime | None, dt.datetime]
Event = tuple[dt.datetime, str, int | None, str | None, str]


class Recorder:
    """Buffers of parity observations and shadow events, written by `flush`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._observations: list[Observation] = []
        self._events: list[Event] = []
        self.dropped = 0
        self.written_observations = 0
        self.written_events = 0

    def observe(
        self,
        path: str,
        lead_id: int,
        attempt_no: int,
        reseller_id: str,
        due_at: dt.datetime | None,
        observed_at: dt.datetime,
    ) -> None:
        assert path in ("pg", "zset"), path
        with self._lock:
            self._observations.append((path, lead_id, attempt_no, reseller_id, due_at, observed_at))
            self._trim(self._observations)

    def event(
        self,
        kind: str,
        *,
        lead_id: int | None = None,
        reseller_id: str | None = None,
        at: dt.datetime | None = None,
        **detail: Any,
    ) -> None:
        assert kind in EVENT_KINDS, kind
        row = (at or utcnow(), kind, lead_id, reseller_id, json.dumps(detail, default=str))
        with self._lock:
            self._events.append(row)
            self._trim(self._events)

    def pending(self) -> int:
        with self._lock:
            return len(self._observations) + len(self._events)

    def _trim(self, buffer: list[Any]) -> None:
        if len(buffer) > MAX_BUFFERED:
            excess = len(buffer) - MAX_BUFFERED
            del buffer[:excess]
            self.dropped += excess

    def flush(self, conn: Connection[Any]) -> int:
        """COPY everything buffered in one transaction; on failure the rows go back to the
        front of the buffers for the next try. Returns the rows written."""
        with self._lock:
            observations, self._observations = self._observations, []
            events, self._events = self._events, []
        if not observations and not events:
            return 0
        try:
            with conn.transaction(), conn.cursor() as cur:
                if observations:
                    _copy(
                        cur,
                        "parity_observations"
                        " (path, lead_id, attempt_no, reseller_id, due_at, observed_at)",
                        observations,
                    )
                if events:
                    _copy(cur, "shadow_events (at, kind, lead_id, reseller_id, detail)", events)
        except Exception:
            with self._lock:
                self._observations[:0] = observations
                self._events[:0] = events
                self._trim(self._observations)
                self._trim(self._events)
            raise
        self.written_observations += len(observations)
        self.written_events += len(events)
        return len(observations) + len(events)


def _copy(cur: Any, target: str, rows: Sequence[tuple[Any, ...]]) -> None:
    with cur.copy(f"COPY {target} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def prune(conn: Connection[Any], retention_days: int, batch: int = 50_000) -> int:
    """Delete observations and events older than the retention, in batches (each its own
    transaction) so that pruning a large backlog never holds long locks."""
    total = 0
    for table, column in (("parity_observations", "observed_at"), ("shadow_events", "at")):
        while True:
            with conn.transaction():
                cur = conn.execute(
                    f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table}"
                    f" WHERE {column} < now() - make_interval(days => %s) LIMIT %s)",
                    (retention_days, batch),
                )
            total += cur.rowcount
            if cur.rowcount < batch:
                break
    return total
