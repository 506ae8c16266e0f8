"""Dispatch one claimed lead: DESIGN.md's five steps, from QUEUED to IN_CALL.

Two transactions. The first locks the lead (only if its fence is still current),
applies the policy checks, takes a channel slot and commits the attempt row together
with QUEUED → DIALING, so a crash after dialing is visible. The second holds the lead's
row lock while the provider is asked to call: a cancel waits for it and then finds the
call in progress, or wins first and the call is never placed.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass

import structlog
from psycopg import Connection

from dispatcher import controls, dnc, lifecycle, metrics, policy
from dispatcher.controls import Paused
from dispatcher.lifecycle import CallEnded, NewAttempt, Row
from dispatcher.runtime import Runtime
from dispatcher.telephony.base import CallRequest, CallStateUnknown, ProviderError

log = structlog.get_logger(__name__)

PAUSED_RECHECK = dt.timedelta(seconds=1)


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
        SELECT id, e164, provider, max_channels, cps::float8 AS cps,
               reseller_id IS NULL AS shared
        FROM outbound_numbers
        WHERE enabled AND (reseller_id = %s OR reseller_id IS NULL)
        """,
        (reseller_id,),
    ).fetchall()
    rows = [r for r in rows if r["provider"] in rt.providers]
    random.shuffle(rows)
    rows.sort(key=lambda r: r["shared"])
    return [Number(r["id"], r["e164"], r["provider"], r["max_channels"], r["cps"]) for r in rows]


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
                paused = controls.paused(conn)
                verdict = _check(conn, lead, paused)
                if verdict is not None:
                    return verdict
                taken, why, wait_s = _take_channel(conn, rt, lead, attempt_id, paused)
                if taken is None:
                    until = lead["db_now"] + dt.timedelta(seconds=wait_s)
                    lifecycle.defer(conn, lead_id, fence, until, why)
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
        # The attempt row is committed; it started at db_now (its started_at).
        metrics.observe_pickup(lead["next_attempt_at"], lead["db_now"])
        result, ended = _place(conn, rt, lead, taken, attempt_id)
    if ended is not None:
        rt.channels.release(ended.number_id, str(attempt_id))
        metrics.call_ended(ended)
    bound.info("dispatched", result=result, number=taken.e164)
    return result


def _check(conn: Connection, lead: Row, paused: Paused) -> str | None:
    """The call-policy checks made just before dialing, from PostgreSQL: each either lets
    the dial go on (None) or ends or defers the lead and says why."""
    lead_id, fence, now = lead["id"], lead["fence"], lead["db_now"]
    if lead["expires_at"] is not None and lead["expires_at"] <= now:
        lifecycle.finish_unattempted(conn, lead_id, fence, "EXPIRED", "expired")
        return "expired"
    # On-call members of an alert group opted in by joining it: alerts skip the lists.
    alert = lead["execution_mode"] == "telephony_alert"
    if not alert and dnc.is_listed(conn, lead["phone"], lead["reseller_id"]):
        lifecycle.finish_unattempted(conn, lead_id, fence, "SKIPPED", "do_not_call")
        return "do_not_call"
    if paused.global_ or lead["reseller_id"] in paused.resellers:
        # Claims skip paused resellers, so the lead waits without churning until resumed.
        lifecycle.defer(conn, lead_id, fence, now + PAUSED_RECHECK, "paused")
        return "deferred:paused"
    window = policy.window_for(lead["execution_mode"], lead["calling_window"])
    # Voice alerts call at any hour and however often; everything else respects both.
    cap_frees = (
        None
        if alert
        else policy.frequency_cap_frees_at(lead["frequency_cap"], _recent_starts(conn, lead))
    )
    if cap_frees is not None:
        earliest, why = cap_frees, "frequency_cap"
    elif policy.may_call_now(window, lead["timezone"], lead["phone"], now):
        return None
    else:
        earliest, why = now, "outside_calling_window"
    at = policy.first_call_time(window, lead["timezone"], lead["phone"], earliest)
    if at is None:
        lifecycle.finish_unattempted(conn, lead_id, fence, "SKIPPED", "no_calling_window")
        return "no_calling_window"
    if lead["expires_at"] is not None and at >= lead["expires_at"]:
        lifecycle.finish_unattempted(conn, lead_id, fence, "EXPIRED", f"{why}_until_expiry")
        return "expired"
    lifecycle.defer(conn, lead_id, fence, at, why)
    return f"deferred:{why}"


def _recent_starts(conn: Connection, lead: Row) -> list[dt.datetime]:
    """Start times of this phone's attempts for this reseller in the last 24 h, newest
    first (the frequency cap counts them)."""
    cap = (lead["frequency_cap"] or {}).get("per_phone_per_day")
    if not cap:
        return []
    rows = conn.execute(
        """
        SELECT started_at FROM call_attempts
        WHERE reseller_id = %s AND phone = %s AND started_at > %s
        ORDER BY started_at DESC LIMIT %s
        """,
        (lead["reseller_id"], lead["phone"], lead["db_now"] - policy.CAP_WINDOW, int(cap)),
    ).fetchall()
    return [r["started_at"] for r in rows]


def _take_channel(
    conn: Connection, rt: Runtime, lead: Row, attempt_id: uuid.UUID, paused: Paused
) -> tuple[Number | None, str, float]:
    """A channel slot on an eligible number: (number, "", 0), or (None, why, how long to
    wait before trying again)."""
    numbers = [
        n for n in eligible_numbers(conn, rt, lead["reseller_id"]) if n.id not in paused.numbers
    ]
    if not numbers:
        return None, "no_number", rt.settings.no_channel_delay_s
    rebuilding = False
    cps_wait: float | None = None
    for number in numbers:
        got = rt.channels.acquire(number.id, str(attempt_id), number.max_channels, number.cps)
        if got.taken:
            return number, "", 0.0
        rebuilding = rebuilding or got.rebuilding
        if got.cps_wait_s is not None:
            cps_wait = got.cps_wait_s if cps_wait is None else min(cps_wait, got.cps_wait_s)
    if rebuilding:
        return None, "channels_rebuilding", rt.settings.no_channel_delay_s
    if cps_wait is not None:
        # Waits exactly until the number's next calls-per-second slot, not in a loop.
        return None, "cps_limit", cps_wait
    return None, "no_free_channel", rt.settings.no_channel_delay_s


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
