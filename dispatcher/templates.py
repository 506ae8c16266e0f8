"""Templates: the call policy a lead follows (calling window, retries, frequency cap,
execution mode). Validated here so the API, the CLI and the importer share one set of
rules; the dispatch policy reads the stored JSON as written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb

from db.models import OUTCOMES
from dispatcher.leads import FieldError, InvalidInput
from dispatcher.windows import CallingWindow

Row = dict[str, Any]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BACKOFFS = ("fixed", "exponential")
EXECUTION_MODES = ("telephony", "telephony_alert")
NAME_MAX = 100
_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{NAME_MAX - 1}}}$")


class _Errors:
    """Collects field errors while a nested body is checked."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def check(self, field: str, ok: bool, message: str) -> bool:
        if not ok:
            self.errors.append(FieldError(field, message))
        return ok

    def keys(self, prefix: str, body: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
        for key in body:
            self.check(f"{prefix}.{key}", key in allowed, "is not a known field")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _window(e: _Errors, w: Any) -> dict[str, Any] | None:
    """Checked by the code that applies it (`windows.CallingWindow`), so what is stored is
    exactly what the dispatcher understands."""
    try:
        window = CallingWindow.from_json(w)
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        e.check(field, False, message or str(exc))
        return None
    if window is None:
        return None
    return {
        "start": window.start.strftime("%H:%M"),
        "end": window.end.strftime("%H:%M"),
        "days": [d for i, d in enumerate(DAYS) if i in window.days],  # week order, no repeats
        **(
            {"restricted_dates": sorted(d.isoformat() for d in window.restricted_dates)}
            if window.restricted_dates
            else {}
        ),
    }


def _retry(e: _Errors, r: Any) -> dict[str, Any]:
    if not e.check("retry", isinstance(r, Mapping), "is required and must be an object"):
        return {}
    e.keys("retry", r, ("max_attempts", "retry_on", "delay_s", "backoff", "jitter", "spread_hours"))
    retry = {**r, "backoff": r.get("backoff") or "fixed"}
    e.check(
        "retry.max_attempts",
        _is_int(retry.get("max_attempts")) and 1 <= retry["max_attempts"] <= 20,
        "must be an integer between 1 and 20",
    )
    retry_on = retry.get("retry_on")
    if e.check(
        "retry.retry_on",
        isinstance(retry_on, list) and all(o in OUTCOMES for o in retry_on),
        f"must be a list of outcomes: {', '.join(OUTCOMES)}",
    ):
        retry["retry_on"] = list(dict.fromkeys(retry_on))
    delay = retry.get("delay_s")
    e.check(
        "retry.delay_s",
        isinstance(delay, int | float) and not isinstance(delay, bool) and delay >= 0,
        "must be a number of seconds >= 0",
    )
    e.check("retry.backoff", retry["backoff"] in BACKOFFS, f"must be one of {', '.join(BACKOFFS)}")
    for key, high in (("jitter", 1), ("spread_hours", 24)):
        value = retry.get(key)
        e.check(
            f"retry.{key}",
            value is None
            or (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and 0 <= value <= high
            ),
            f"must be a number from 0 to {high}",
        )
    return {k: v for k, v in retry.items() if v is not None}


def _cap(e: _Errors, c: Any) -> dict[str, Any] | None:
    if c is None:
        return None
    if not e.check("frequency_cap", isinstance(c, Mapping), "must be an object or null"):
        return None
    e.keys("frequency_cap", c, ("per_phone_per_day",))
    n = c.get("per_phone_per_day")
    e.check("frequency_cap.per_phone_per_day", _is_int(n) and n >= 1, "must be an integer >= 1")
    return {"per_phone_per_day": n}


def validate(name: str, body: Mapping[str, Any]) -> Row:
    """The template to store, or InvalidInput naming every bad field."""
    e = _Errors()
    e.check(
        "name",
        bool(_NAME.match(name)),
        f"must be 1-{NAME_MAX} letters, digits, '_', '-' or '.', starting with a letter or digit",
    )
    for key in body:
        e.check(key, key in _PARTS or key == "execution_mode", "is not a known field")
    parts = {key: part(e, body.get(key)) for key, part in _PARTS.items()}
    mode = body.get("execution_mode") or "telephony"
    modes = ", ".join(EXECUTION_MODES)
    e.check("execution_mode", mode in EXECUTION_MODES, f"must be one of {modes}")
    if e.errors:
        raise InvalidInput(e.errors)
    return {"name": name, **parts, "execution_mode": mode}


_PARTS: dict[str, Callable[[_Errors, Any], Any]] = {
    "calling_window": _window,
    "retry": _retry,
    "frequency_cap": _cap,
}


def _jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def put(conn: Connection, name: str, body: Mapping[str, Any]) -> tuple[Row, bool]:
    """Create or replace a template; (the template, True when it was new)."""
    t = validate(name, body)
    row = conn.execute(
        """
        INSERT INTO templates (name, calling_window, retry, frequency_cap, execution_mode)
        VALUES (%s, %s, %s, %s, %s)
        ON CONFLICT (name) DO UPDATE SET
            calling_window = EXCLUDED.calling_window, retry = EXCLUDED.retry,
            frequency_cap = EXCLUDED.frequency_cap, execution_mode = EXCLUDED.execution_mode,
            updated_at = now()
        RETURNING *, (xmax = 0) AS inserted
        """,
        (
            t["name"],
            _jsonb(t["calling_window"]),
            Jsonb(t["retry"]),
            _jsonb(t["frequency_cap"]),
            t["execution_mode"],
        ),
    ).fetchone()
    assert row is not None
    return row, bool(row["inserted"])


def get(conn: Connection, name: str) -> Row | None:
    return conn.execute("SELECT * FROM templates WHERE name = %s", (name,)).fetchone()


def list_all(conn: Connection) -> list[Row]:
    return conn.execute("SELECT * FROM templates ORDER BY name").fetchall()


def template_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": row["name"],
        "calling_window": row["calling_window"],
        "retry": row["retry"],
        "frequency_cap": row["frequency_cap"],
        "execution_mode": row["execution_mode"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }
