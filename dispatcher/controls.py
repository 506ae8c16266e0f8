"""Pause and resume dispatch: everything (global), one reseller, or one outbound number.

A control is a row of `controls`, upserted, never deleted, so the last change and its
time stay visible. Pausing moves no lead: the scheduler and dispatcher read `paused()`
and leave paused leads waiting (deferred to BACKLOG), so nothing is lost. Resuming
NOTIFYs the schedulers so that the waiting leads are claimed at once, not at their next
poll.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from psycopg import Connection

from dispatcher import leads, lifecycle
from dispatcher.leads import FieldError, InvalidInput

log = structlog.get_logger(__name__)

Row = dict[str, Any]

SCOPES = ("global", "reseller", "number")
_MAX_ID = 2**63 - 1  # outbound_numbers.id is a bigint


@dataclass(frozen=True)
class Target:
    """A validated scope and its id as stored (`scope_id`: '' for global, the reseller id,
    or the number id as text)."""

    scope: str
    scope_id: str

    @property
    def number_id(self) -> int:
        assert self.scope == "number", self.scope
        return int(self.scope_id)


def _number_id(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_ID:
        raise ValueError("must be an outbound number id (a positive integer)")
    return value


def target(scope: Any, scope_id: Any) -> Target:
    """The control `scope` / `scope_id` name, or InvalidInput naming `scope` or `id`."""
    if scope not in SCOPES:
        raise InvalidInput([FieldError("scope", f"must be one of {', '.join(SCOPES)}")])
    blank = scope_id is None or (isinstance(scope_id, str) and not scope_id.strip())
    if scope == "global":
        if not blank:
            raise InvalidInput([FieldError("id", "must be absent for the global scope")])
        return Target("global", "")
    if blank:
        raise InvalidInput([FieldError("id", f"is required for the {scope} scope")])
    if scope == "reseller":
        if not isinstance(scope_id, str) or len(scope_id.strip()) > leads.MAX_TEXT:
            raise InvalidInput(
                [FieldError("id", f"must be a reseller id (<= {leads.MAX_TEXT} characters)")]
            )
        return Target("reseller", scope_id.strip())
    try:
        return Target("number", str(_number_id(scope_id)))
    except ValueError as exc:
        raise InvalidInput([FieldError("id", str(exc))]) from None


def _set(conn: Connection, scope: Any, scope_id: Any, paused_: bool) -> Row:
    t = target(scope, scope_id)
    if t.scope == "number":
        exists = conn.execute(
            "SELECT 1 FROM outbound_numbers WHERE id = %s", (t.number_id,)
        ).fetchone()
        if exists is None:
            raise InvalidInput([FieldError("id", f"no outbound number {t.number_id}")])
    row = conn.execute(
        """
        INSERT INTO controls (scope, scope_id, paused, updated_at)
        VALUES (%s, %s, %s, now())
        ON CONFLICT (scope, scope_id)
        DO UPDATE SET paused = EXCLUDED.paused, updated_at = EXCLUDED.updated_at
        RETURNING *
        """,
        (t.scope, t.scope_id, paused_),
    ).fetchone()
    assert row is not None
    log.info("dispatch_paused" if paused_ else "dispatch_resumed", scope=t.scope, id=t.scope_id)
    return row


def pause(conn: Connection, scope: Any, scope_id: Any) -> Row:
    """Stop dispatching in `scope` (idempotent); returns the control row. Raises
    InvalidInput for a bad scope or id, or a number that does not exist."""
    return _set(conn, scope, scope_id, True)


def resume(conn: Connection, scope: Any, scope_id: Any) -> Row:
    """Dispatch in `scope` again (idempotent) and wake the schedulers on commit."""
    row = _set(conn, scope, scope_id, False)
    lifecycle.notify(conn)
    return row


def list_controls(conn: Connection, reseller: str | None) -> list[Row]:
    """Every control (reseller None: an admin), else those that can stop the reseller's
    calls: the global one, its own, and those of the numbers it owns or shares."""
    if reseller is None:
        rows = conn.execute("SELECT * FROM controls").fetchall()
    else:
        rows = conn.execute(
            """
            SELECT * FROM controls
            WHERE scope = 'global'
               OR (scope = 'reseller' AND scope_id = %(r)s)
               OR (scope = 'number' AND scope_id IN (
                    SELECT id::text FROM outbound_numbers
                    WHERE reseller_id = %(r)s OR reseller_id IS NULL))
            """,
            {"r": reseller},
        ).fetchall()
    return sorted(rows, key=_order)


def _order(row: Mapping[str, Any]) -> tuple[int, int, str]:
    scope, scope_id = row["scope"], row["scope_id"]
    return (SCOPES.index(scope), int(scope_id) if scope == "number" else 0, scope_id)


# --- the hot read -----------------------------------------------------------------------


@dataclass(frozen=True)
class Paused:
    """What is paused now; the scheduler and the dispatcher consult it per batch."""

    global_: bool
    resellers: frozenset[str]
    numbers: frozenset[int]

    def stops(self, reseller_id: str, number_id: int | None = None) -> bool:
        """Whether a lead of `reseller_id` (dialed from `number_id`, if chosen) must wait."""
        return (
            self.global_
            or reseller_id in self.resellers
            or (number_id is not None and number_id in self.numbers)
        )


def summary(rows: Iterable[Mapping[str, Any]]) -> Paused:
    """The paused scopes among `rows` (control rows; unpaused ones are ignored)."""
    on = [(r["scope"], r["scope_id"]) for r in rows if r["paused"]]
    return Paused(
        global_=any(scope == "global" for scope, _ in on),
        resellers=frozenset(i for scope, i in on if scope == "reseller"),
        numbers=frozenset(int(i) for scope, i in on if scope == "number"),
    )


def paused(conn: Connection) -> Paused:
    """The paused scopes, in one query over a table of a handful of rows."""
    return summary(
        conn.execute("SELECT scope, scope_id, paused FROM controls WHERE paused").fetchall()
    )


# --- serialisation ----------------------------------------------------------------------


def control_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The control as the API returns it: `id` null (global), a reseller id, or a number id."""
    scope, scope_id = row["scope"], row["scope_id"]
    return {
        "scope": scope,
        "id": None if scope == "global" else int(scope_id) if scope == "number" else scope_id,
        "paused": row["paused"],
        "updated_at": row["updated_at"].isoformat(),
    }


def paused_json(p: Paused) -> dict[str, Any]:
    return {
        "global": p.global_,
        "resellers": sorted(p.resellers),
        "numbers": sorted(p.numbers),
    }
