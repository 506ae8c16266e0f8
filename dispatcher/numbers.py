"""Outbound numbers: the caller ids we dial from, each with its channel limit.

A number with `reseller_id` NULL is in the shared pool. Numbers are checked for E.164
shape only (not against the numbering plan): they are ours, issued by the provider, and
the simulator uses fictional ones. Each change NOTIFYs the scheduler, since capacity
may have grown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from psycopg import Connection

from dispatcher import lifecycle
from dispatcher.leads import Conflict, FieldError, InvalidInput

Row = dict[str, Any]

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_PROVIDER = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# Columns a PATCH may set, in a fixed order (the SQL is built from these names only).
_PATCHABLE = ("provider", "max_channels", "cps", "reseller_id", "enabled")


def _check(field: str, value: Any, errors: list[FieldError]) -> None:
    ok, message = {
        "e164": (isinstance(value, str) and bool(_E164.match(value)), "must be E.164"),
        "provider": (
            isinstance(value, str) and bool(_PROVIDER.match(value)),
            "must be a provider name such as simulator or twilio",
        ),
        "max_channels": (
            isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            "must be an integer >= 1",
        ),
        "cps": (
            value is None
            or (isinstance(value, int | float) and not isinstance(value, bool) and value > 0),
            "must be a number > 0 or null",
        ),
        "reseller_id": (
            value is None or (isinstance(value, str) and 0 < len(value.strip()) <= 200),
            "must be a reseller id or null for the shared pool",
        ),
        "enabled": (isinstance(value, bool), "must be true or false"),
    }.get(field, (False, "is not a known field"))
    if not ok:
        errors.append(FieldError(field, message))


def _validated(values: Mapping[str, Any], required: tuple[str, ...]) -> dict[str, Any]:
    errors = [FieldError(f, "is required") for f in required if values.get(f) is None]
    for field, value in values.items():
        if field not in required or value is not None:
            _check(field, value, errors)
    if errors:
        raise InvalidInput(errors)
    return dict(values)


def create(conn: Connection, item: Mapping[str, Any]) -> Row:
    """Add a number; Conflict when its E.164 is already configured."""
    n = _validated(
        {"provider": "simulator", "cps": None, "reseller_id": None, "enabled": True, **item},
        required=("e164", "provider", "max_channels"),
    )
    row = conn.execute(
        """
        INSERT INTO outbound_numbers (e164, provider, max_channels, cps, reseller_id, enabled)
        VALUES (%(e164)s, %(provider)s, %(max_channels)s, %(cps)s, %(reseller_id)s, %(enabled)s)
        ON CONFLICT (e164) DO NOTHING
        RETURNING *
        """,
        n,
    ).fetchone()
    if row is None:
        raise Conflict(f"number {n['e164']} already exists")
    lifecycle.notify(conn)
    return row


def get(conn: Connection, number_id: int) -> Row | None:
    return conn.execute("SELECT * FROM outbound_numbers WHERE id = %s", (number_id,)).fetchone()


def list_visible(conn: Connection, reseller_id: str | None) -> list[Row]:
    """Every number (reseller_id None: an admin), else the reseller's own and the shared."""
    if reseller_id is None:
        return conn.execute("SELECT * FROM outbound_numbers ORDER BY id").fetchall()
    return conn.execute(
        "SELECT * FROM outbound_numbers WHERE reseller_id = %s OR reseller_id IS NULL ORDER BY id",
        (reseller_id,),
    ).fetchall()


def patch(conn: Connection, number_id: int, changes: Mapping[str, Any]) -> Row | None:
    """Apply the given fields (absent ones unchanged); None when there is no such number."""
    changes = _validated(changes, required=())
    columns = [c for c in _PATCHABLE if c in changes]
    if not columns:
        return get(conn, number_id)
    assignments = ", ".join(f"{c} = %({c})s" for c in columns)
    row = conn.execute(
        f"UPDATE outbound_numbers SET {assignments}, updated_at = now()"
        " WHERE id = %(id)s RETURNING *",
        {**changes, "id": number_id},
    ).fetchone()
    if row is not None:
        lifecycle.notify(conn)
    return row


def number_json(row: Mapping[str, Any]) -> dict[str, Any]:
    cps = row["cps"]
    return {
        "id": row["id"],
        "e164": row["e164"],
        "provider": row["provider"],
        "max_channels": row["max_channels"],
        "cps": float(cps) if isinstance(cps, Decimal) else cps,
        "reseller_id": row["reseller_id"],
        "enabled": row["enabled"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }
