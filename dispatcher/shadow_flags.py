"""Shadow mode's switch: the `shadow_flags` table, and each process's cached copy of it.

Scope '*' switches every reseller; a reseller's own row overrides it either way (a
reseller row with enabled=false keeps that reseller out while '*' is on). Writes NOTIFY
every process, which reloads at once; each also reloads every `shadow_flag_refresh_s`
in case a NOTIFY was missed or someone changed the table by hand. Reading the cache is a
dict lookup, so the lifecycle pays nothing while every flag is off.

No Redis and no Prometheus here: the CLI imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg import Connection

GLOBAL = "*"
NOTIFY_CHANNEL = "switchboard_shadow_flags"


@dataclass(frozen=True)
class FlagState:
    global_: bool = False
    resellers: Mapping[str, bool] = field(default_factory=dict)

    @property
    def any_enabled(self) -> bool:
        return self.global_ or any(self.resellers.values())

    def applies(self, reseller_id: str) -> bool:
        own = self.resellers.get(reseller_id)
        return self.global_ if own is None else own

    def sql_filter(self, column: str = "reseller_id") -> tuple[str, dict[str, Any]]:
        """A WHERE clause selecting the shadowed resellers' rows, with its parameters."""
        on = [r for r, v in self.resellers.items() if v]
        off = [r for r, v in self.resellers.items() if not v]
        if self.global_:
            return f"NOT ({column} = ANY(%(shadow_off)s))", {"shadow_off": off}
        return f"{column} = ANY(%(shadow_on)s)", {"shadow_on": on}


class Flags:
    """The process's copy; replaced whole on each load, so readers never lock."""

    def __init__(self) -> None:
        self.state = FlagState()

    @property
    def any_enabled(self) -> bool:
        return self.state.any_enabled

    def applies(self, reseller_id: str) -> bool:
        return self.state.applies(reseller_id)

    def load(self, conn: Connection[Any]) -> FlagState:
        self.state = read(conn)
        return self.state


def read(conn: Connection[Any]) -> FlagState:
    rows = conn.execute("SELECT scope, enabled FROM shadow_flags").fetchall()
    values = {_get(r, 0, "scope"): bool(_get(r, 1, "enabled")) for r in rows}
    return FlagState(values.pop(GLOBAL, False), values)


def set_flag(conn: Connection[Any], scope: str, enabled: bool) -> None:
    """Switch shadow mode for `scope` ('*' or a reseller id); every process follows at
    commit (NOTIFY), or within `shadow_flag_refresh_s` at the latest."""
    conn.execute(
        "INSERT INTO shadow_flags (scope, enabled, updated_at) VALUES (%s, %s, now())"
        " ON CONFLICT (scope) DO UPDATE SET enabled = excluded.enabled, updated_at = now()",
        (scope, enabled),
    )
    conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, scope))


def rows(conn: Connection[Any]) -> list[dict[str, Any]]:
    found = conn.execute(
        "SELECT scope, enabled, updated_at FROM shadow_flags ORDER BY scope = '*' DESC, scope"
    ).fetchall()
    return [
        {
            "scope": _get(r, 0, "scope"),
            "enabled": _get(r, 1, "enabled"),
            "updated_at": _get(r, 2, "updated_at"),
        }
        for r in found
    ]


def _get(row: Any, index: int, name: str) -> Any:
    """Rows from a dict_row pool or a plain connection alike."""
    return row[name] if isinstance(row, Mapping) else row[index]
