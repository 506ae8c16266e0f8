"""Dispatch one claimed lead: DESIGN.md's five steps, from QUEUED to IN_CALL.

Two transactions. The first locks the lead (only if its fence is still current),
applies the policy checks, takes a channel slot and commits the attempt row together
with QUEUED → DIALING, so a crash after dialing is visible. The second holds the lead's
row lock while the provider is asked to call: a cancel waits for it and then finds the
call in progress, or wins first and the call is never placed.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

import structlog
from psycopg import Connection

from dispatcher import lifecycle
from dispatcher.lifecycle import CallEnded, NewAttempt, Row
from dispatcher.runtime import Runtime
from dispatcher.telephony.base import CallRequest, CallStateUnknown, ProviderError

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Number:
    id: int
    e164: str
    provider: str
    max_channels: int
    cps: float | None


def eligible_numbers(conn: Connection, rt: Runtime, reseller_id: str) -> list[Number]:
    """Enabled numbers of the lead's reseller, then the shared pool, each in random order
    so that concurrent dispatches spread over the numbers."""
    rows = conn.execute(
        """
        SELECT id, e164, provider, max_channels, cps, reseller_id IS NULL AS shared
        FROM outbound_numbers
        WHERE enabled AND (reseller_id = %s OR reseller_id IS NULL)
        """,
        (reseller_id,),
    ).fetchall()
    rows = [r for r in rows if r["provider"] in rt.providers]
    random.shuffle(rows)
    rows.sort(key=lambda r: r["shared"])
    return [
        Number(r["id"], r["e164"], r["provider"], r["max_channels"], _float(r["cps"])) for r in rows
    ]


def dispatch_lead(rt: Runtime, lead_id: int, fence: int) -> str:
    """Run one dispatch; returns what happened (for logs and tests)."""
    attempt_id = uuid.uuid4()
    bound = log.bind(lead_id=lead_id, attempt_id=str(attempt_id))
    taken: Number | None = None
    with rt.pool.connection() as conn:
        try:
            with conn.transaction():
                lead = lifecycle.lock_queued(conn, lead_id, fence)
                if lead is None:
                    return "stale"
                verdict = _check(conn, lead)
                if verdict is not None:
                    return verdict
                taken, why = _take_channel(conn, rt, lead, attempt_id)
                if taken is None:
                    lifecycle.defer(conn, lead_id, fence, rt.settings.no_channel_delay_s, why)
                    return f"deferred:{why}"
                lifecycle.start_dialing(
                    conn,
                    lead_id,
                    fence,
                    NewAttempt(attempt_id, taken.id, taken.e164, taken.provider),
                )
        except BaseException:
            if taken is not None:
                rt.channels.release(taken.id, str(attempt_id))
            raise
        result, ended = _place(conn, rt, lead, taken, attempt_id)
    if ended is not None:
        rt.channels.release(ended.number_id, str(attempt_id))
    bound.info("dispatched", result=result, number=taken.e164)
    return result


def _check(conn: Connection, lead: Row) -> str | None:
    """Policy checks that end or defer the lead before a channel is taken."""
    expires_at = lead["expires_at"]
    if expires_at is not None:
        now = conn.execute("SELECT now() AS now").fetchone()["now"]  # type: ignore[index]
        if expires_at <= now:
            lifecycle.finish_unattempted(conn, lead["id"], lead["fence"], "EXPIRED", "expired")
            return "expired"
    return None


def _take_channel(
    conn: Connection, rt: Runtime, lead: Row, attempt_id: uuid.UUID
) -> tuple[Number | None, str]:
    numbers = eligible_numbers(conn, rt, lead["reseller_id"])
    if not numbers:
        return None, "no_number"
    rebuilding = False
    for number in numbers:
        got = rt.channels.acquire(number.id, str(attempt_id), number.max_channels)
        if got:
            return number, ""
        rebuilding = rebuilding or got is None
    return None, "channels_rebuilding" if rebuilding else "no_free_channel"


def _place(
    conn: Connection, rt: Runtime, lead: Row, number: Number, attempt_id: uuid.UUID
) -> tuple[str, CallEnded | None]:
    with conn.transaction():
        if lifecycle.lock_dialing(conn, lead["id"], attempt_id) is None:
            ended = lifecycle.end_call(
                conn, attempt_id, "canceled", error="cancelled before dialing"
            )
            return "cancelled", ended
        request = CallRequest(
            attempt_id=attempt_id,
            lead_id=lead["id"],
            to=lead["phone"],
            from_=number.e164,
            max_channels=number.max_channels,
            cps=number.cps,
            webhook_url=f"{rt.settings.callback_base_url}/v1/webhooks/{number.provider}",
            payload={
                "template": lead["template"],
                "customer_name": lead["customer_name"],
                **(lead["payload"] or {}),
            },
        )
        try:
            call_id = rt.provider(number.provider).place_call(request)
        except CallStateUnknown as exc:
            log.warning(
                "call_state_unknown", lead_id=lead["id"], attempt_id=str(attempt_id), error=str(exc)
            )
            return "unknown", None  # the reconciler asks the provider, then ends or keeps it
        except ProviderError as exc:
            ended = lifecycle.end_call(conn, attempt_id, "failed", error=f"provider: {exc}")
            return "provider_error", ended
        lifecycle.mark_in_call(conn, lead["id"], attempt_id, call_id)
        return "placed", None


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
