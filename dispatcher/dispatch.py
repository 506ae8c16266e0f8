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
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from psycopg import Connection

from dispatcher import controls, dnc, lifecycle, metrics, policy, wakeup
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
    shared: bool = False  # the shared pool, used after the reseller's own numbers


def eligible_numbers(conn: Connection, rt: Runtime, reseller_id: str) -> list[Number]:
    """Enabled numbers of the lead's reseller and of the shared pool (`_Numbers` orders
    them for each lead)."""
    rows = conn.execute(
        """
        SELECT id, e164, provider, max_channels, cps::float8 AS cps,
               reseller_id IS NULL AS shared
        FROM outbound_numbers
        WHERE enabled AND (reseller_id = %s OR reseller_id IS NULL)
        """,
        (reseller_id,),
    ).fetchall()
    return [
        Number(r["id"], r["e164"], r["provider"], r["max_channels"], r["cps"], r["shared"])
        for r in rows
        if r["provider"] in rt.providers
    ]


def dispatch_lead(rt: Runtime, lead_id: int, fence: int) -> str:
    """Run one dispatch; returns what happened (for logs and tests)."""
    return dispatch_batch(rt, [(lead_id, fence)])[lead_id]


@dataclass
class _Dial:
    lead: Row
    number: Number
    attempt_id: uuid.UUID


def dispatch_batch(rt: Runtime, claims: Sequence[tuple[int, int]]) -> dict[int, str]:
    """Dispatch a batch of claimed leads (lead id, fence) with a few statements per batch
    rather than per lead; returns what happened to each lead."""
    results: dict[int, str] = {}
    dials: list[_Dial] = []
    with rt.pool.connection() as conn:
        try:
            with conn.transaction():
                leads = lifecycle.lock_queued_many(conn, claims)
                results = {lead_id: "stale" for lead_id, _ in claims}
                paused = controls.paused(conn) if leads else Paused(False, frozenset(), frozenset())
                listed = dnc.listed_among(
                    conn,
                    [
                        (lead["phone"], lead["reseller_id"])
                        for lead in leads
                        if lead["execution_mode"] != "telephony_alert"
                    ],
                )
                numbers = _Numbers(conn, rt, paused)
                for lead in leads:
                    verdict = _check(conn, lead, paused, listed)
                    if verdict is None:
                        verdict = _take_channel(conn, rt, lead, numbers, dials)
                    results[lead["id"]] = verdict
                lifecycle.start_dialing_many(
                    conn,
                    [(d.lead["id"], d.lead["fence"], _attempt(d)) for d in dials],
                )
        except BaseException:
            for d in dials:
                rt.channels.release(d.number.id, str(d.attempt_id))
            raise
        for d in dials:  # the attempt rows are committed; each started at db_now
            metrics.observe_pickup(d.lead["next_attempt_at"], d.lead["db_now"])
        ended = _place(conn, rt, dials, results)
    for call in ended:
        rt.channels.release(call.number_id, str(call.attempt_id))
        metrics.call_ended(call)
    if ended:
        wakeup.channel_freed(rt)
    for d in dials:
        log.info(
            "dispatched",
            lead_id=d.lead["id"],
            attempt_id=str(d.attempt_id),
            result=results[d.lead["id"]],
            number=d.number.e164,
        )
    return results


def _attempt(d: _Dial) -> NewAttempt:
    return NewAttempt(d.attempt_id, d.number.id, d.number.e164, d.number.provider)


def _check(
    conn: Connection, lead: Row, paused: Paused, listed: set[tuple[str, str | None]]
) -> str | None:
    """The call-policy checks made just before dialing, from PostgreSQL: each either lets
    the dial go on (None) or ends or defers the lead and says why."""
    lead_id, fence, now = lead["id"], lead["fence"], lead["db_now"]
    if lead["expires_at"] is not None and lead["expires_at"] <= now:
        lifecycle.finish_unattempted(conn, lead_id, fence, "EXPIRED", "expired")
        return "expired"
    # On-call members of an alert group opted in by joining it: alerts skip the lists.
    alert = lead["execution_mode"] == "telephony_alert"
    if not alert and (lead["phone"], lead["reseller_id"]) in listed:
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


class _Numbers:
    """Each reseller's eligible, unpaused numbers, read once per batch."""

    def __init__(self, conn: Connection, rt: Runtime, paused: Paused) -> None:
        self._conn, self._rt, self._paused = conn, rt, paused
        self._by_reseller: dict[str, list[Number]] = {}

    def for_lead(self, reseller_id: str) -> list[Number]:
        if reseller_id not in self._by_reseller:
            self._by_reseller[reseller_id] = [
                n
                for n in eligible_numbers(self._conn, self._rt, reseller_id)
                if n.id not in self._paused.numbers
            ]
        # Own numbers first, each group in a fresh random order per lead.
        numbers = self._by_reseller[reseller_id]
        return sorted(random.sample(numbers, len(numbers)), key=lambda n: n.shared)


def _take_channel(
    conn: Connection, rt: Runtime, lead: Row, numbers: _Numbers, dials: list[_Dial]
) -> str | None:
    """A channel slot on an eligible number (None, and the dial joins `dials`), or the
    lead deferred until a slot may be free and why."""
    candidates = numbers.for_lead(lead["reseller_id"])
    attempt_id = uuid.uuid4()
    why, wait_s = "no_number", rt.settings.no_channel_delay_s
    rebuilding = False
    cps_wait: float | None = None
    for number in candidates:
        got = rt.channels.acquire(number.id, str(attempt_id), number.max_channels, number.cps)
        if got.taken:
            dials.append(_Dial(lead, number, attempt_id))
            return None
        rebuilding = rebuilding or got.rebuilding
        if got.cps_wait_s is not None:
            cps_wait = got.cps_wait_s if cps_wait is None else min(cps_wait, got.cps_wait_s)
    if rebuilding:
        why = "channels_rebuilding"
    elif cps_wait is not None:
        # Waits exactly until the number's next calls-per-second slot, not in a loop.
        why, wait_s = "cps_limit", cps_wait
    elif candidates:
        why = "no_free_channel"
    until = lead["db_now"] + dt.timedelta(seconds=wait_s)
    lifecycle.defer(conn, lead["id"], lead["fence"], until, why)
    return f"deferred:{why}"


def _place(
    conn: Connection, rt: Runtime, dials: Sequence[_Dial], results: dict[int, str]
) -> list[CallEnded]:
    """Ask the provider for each call while holding the leads' row locks: a cancel waits
    for this transaction and then finds the call in progress, or won before and the call
    is never placed. Returns the calls that ended here (their slots are to be freed)."""
    if not dials:
        return []
    ended: list[CallEnded] = []
    placed: list[tuple[int, uuid.UUID, str]] = []
    with conn.transaction():
        still = {
            r["id"]
            for r in lifecycle.lock_dialing_many(
                conn, [(d.lead["id"], d.attempt_id) for d in dials]
            )
        }
        for d in dials:
            lead_id = d.lead["id"]
            if lead_id not in still:
                call = lifecycle.end_call(
                    conn, d.attempt_id, "canceled", error="cancelled before dialing"
                )
                ended += [call] if call is not None else []
                results[lead_id] = "cancelled"
                continue
            try:
                call_id = rt.provider(d.number.provider).place_call(_request(rt, d))
            except CallStateUnknown as exc:
                log.warning(
                    "call_state_unknown",
                    lead_id=lead_id,
                    attempt_id=str(d.attempt_id),
                    error=str(exc),
                )
                results[lead_id] = "unknown"  # the reconciler asks the provider, then settles
                continue
            except ProviderError as exc:
                call = lifecycle.end_call(conn, d.attempt_id, "failed", error=f"provider: {exc}")
                ended += [call] if call is not None else []
                results[lead_id] = "provider_error"
                continue
            placed.append((lead_id, d.attempt_id, call_id))
            results[lead_id] = "placed"
        lifecycle.mark_in_call_many(conn, placed)
    return ended


def _request(rt: Runtime, d: _Dial) -> CallRequest:
    lead, number = d.lead, d.number
    return CallRequest(
        attempt_id=d.attempt_id,
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
