"""Voice alerts: fire an alert into an alert group, read alerts with their timeline, and
resolve them. The calls themselves are ordinary leads made by `dispatcher.escalation`.

A fire is deduplicated twice over:

- a Redis key `{prefix}:alert-dedup:{reseller}:{alert_id}` taken with SET NX EX for
  `dedup_ttl_seconds` (flap protection, even across resolved alerts). A TTL of 0 never
  touches Redis, and the key is released whenever a fire queued no call (no members,
  every member capped, an error) so a retry is not swallowed. If Redis is unreachable
  the fire goes on without the window: a missed page costs more than a repeated one,
  and the open-alert rule below still holds;
- while an alert with the same (reseller, alert_id) is open (not resolved), a fire is
  deduplicated to it, as PagerDuty does. The partial unique index `alerts_open_uq` makes
  that hold under concurrency too.

Flood protection caps alert calls per reseller and per alert id in a sliding window
(settings `alert_calls_per_window`, `alert_calls_per_alert`, `alert_window_s`). Members
over a cap are not called, appear in the answer's `failed` and in a metric, and are a
`capped` step of the alert's timeline: never dropped silently. Fires of one reseller are
serialised by a transaction-scoped advisory lock, so concurrent fires cannot both pass
the cap or both open an alert.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
import redis
import structlog
from psycopg import Connection
from psycopg.types.json import Jsonb

from dispatcher import alert_groups, escalation, leads, metrics
from dispatcher.leads import Conflict, FieldError, InvalidInput, Page
from dispatcher.logs import mask_phone
from dispatcher.settings import Settings

if TYPE_CHECKING:
    from dispatcher.runtime import Runtime

log = structlog.get_logger(__name__)

Row = dict[str, Any]

ALERT_STATUSES = ("calling", "acknowledged", "exhausted", "resolved")
MODES = ("parallel", "sequential")
DEFAULT_TEMPLATE = "alert"
DEFAULT_DEDUP_TTL_S = 300
MAX_DEDUP_TTL_S = 7 * 86_400
MIN_ROUNDS, MAX_ROUNDS = 1, 10
MAX_MESSAGE = 2_000  # spoken aloud: longer than anyone listens to on a phone
FLOOD_CAP = "flood_cap"


# --- the request ------------------------------------------------------------------------


@dataclass(frozen=True)
class FireRequest:
    """A validated fire (see `parse_fire`); the health monitor builds one directly."""

    reseller_id: str
    alert_id: str
    group_name: str
    message: str
    template: str = DEFAULT_TEMPLATE
    merchant_id: str | None = None
    dedup_ttl_s: int = DEFAULT_DEDUP_TTL_S
    mode: str = "parallel"
    rounds: int = 1
    extra_payload: dict[str, Any] = field(default_factory=dict)
    actor: str | None = None  # the token subject, recorded in the timeline


def _required(item: Mapping[str, Any], name: str, errors: list[FieldError], max_len: int) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value.strip():
        errors.append(FieldError(name, "is required and must not be blank"))
        return ""
    if len(value.strip()) > max_len:
        errors.append(FieldError(name, f"must be at most {max_len} characters"))
    return value.strip()


def _optional_text(item: Mapping[str, Any], name: str, errors: list[FieldError]) -> str | None:
    """None when absent or null; a blank string is an error, not a silent default."""
    if item.get(name) is None:
        return None
    return _required(item, name, errors, leads.MAX_TEXT)


def _int(
    item: Mapping[str, Any], name: str, default: int, lo: int, hi: int, errors: list[FieldError]
) -> int:
    value = item.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(FieldError(name, "must be an integer"))
    elif not lo <= value <= hi:
        errors.append(FieldError(name, f"must be between {lo} and {hi}"))
    else:
        return value
    return default


def parse_fire(item: Mapping[str, Any], reseller_id: str, actor: str | None) -> FireRequest:
    """The fire body (API field names) validated; InvalidInput naming every bad field.

    Blank or whitespace-only ids, names and message are refused (a blank alert_id would
    dedup every alert of the reseller against each other)."""
    errors: list[FieldError] = []
    alert_id = _required(item, "alert_id", errors, leads.MAX_TEXT)
    group_name = _required(item, "alert_group_name", errors, leads.MAX_TEXT)
    message = _required(item, "alert_message", errors, MAX_MESSAGE)
    template = _optional_text(item, "template", errors) or DEFAULT_TEMPLATE
    merchant_id = _optional_text(item, "merchant_id", errors)
    ttl = _int(item, "dedup_ttl_seconds", DEFAULT_DEDUP_TTL_S, 0, MAX_DEDUP_TTL_S, errors)
    mode = item.get("mode") or "parallel"
    if mode not in MODES:
        errors.append(FieldError("mode", f"must be one of {', '.join(MODES)}"))
    rounds = _int(item, "rounds", MIN_ROUNDS, MIN_ROUNDS, MAX_ROUNDS, errors)
    if mode == "parallel" and rounds != 1:
        errors.append(FieldError("rounds", "applies to sequential mode only"))
    extra = item.get("extra_payload")
    if extra is None:
        extra = {}
    elif not isinstance(extra, dict):
        errors.append(FieldError("extra_payload", "must be a JSON object"))
    elif len(json.dumps(extra, separators=(",", ":")).encode()) > leads.MAX_PAYLOAD_BYTES:
        errors.append(
            FieldError("extra_payload", f"must be at most {leads.MAX_PAYLOAD_BYTES} bytes")
        )
    if errors:
        raise InvalidInput(errors)
    return FireRequest(
        reseller_id=reseller_id,
        alert_id=alert_id,
        group_name=group_name,
        message=message,
        template=template,
        merchant_id=merchant_id,
        dedup_ttl_s=ttl,
        mode=mode,
        rounds=rounds,
        extra_payload=extra,
        actor=actor,
    )


# --- firing -----------------------------------------------------------------------------


@dataclass
class FireResult:
    status: str  # queued | deduplicated | no_members | failed (nothing could be called)
    alert_id: str
    alert: int | None = None
    leads: list[int] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "alert_id": self.alert_id,
            "alert": self.alert,
            "leads_queued": len(self.leads),
            "leads": self.leads,
            "failed": self.failed,
        }


def dedup_key(settings: Settings, reseller_id: str, alert_id: str) -> str:
    """Namespaced by prefix and reseller: two tenants' `alert_id`s never collide."""
    return f"{settings.redis_prefix}:alert-dedup:{reseller_id}:{alert_id}"


def _acquire(rt: Runtime, key: str, ttl_s: int) -> bool | None:
    """True: the window is ours; False: a fire inside the window holds it; None: Redis
    is unreachable and the fire proceeds without the window."""
    try:
        return bool(rt.redis.set(key, "1", nx=True, ex=ttl_s))
    except redis.RedisError as exc:
        log.warning("alert_dedup_unavailable", error=type(exc).__name__)
        return None


def _release(rt: Runtime, key: str) -> None:
    try:
        rt.redis.delete(key)
    except redis.RedisError as exc:  # the key expires on its own
        log.warning("alert_dedup_release_failed", error=type(exc).__name__)


def _require_template(conn: Connection, name: str) -> None:
    if conn.execute("SELECT 1 FROM templates WHERE name = %s", (name,)).fetchone() is None:
        raise InvalidInput([FieldError("template", f"no template named {name!r}")])


def fire(rt: Runtime, req: FireRequest) -> FireResult:
    """Fire `req`: deduplicate, open the alert and queue its first calls, in one
    transaction. Raises InvalidInput (unknown template) or GroupNotFound before Redis
    is touched."""
    with rt.pool.connection() as conn, conn.transaction():
        _require_template(conn, req.template)
        if alert_groups.get(conn, req.reseller_id, req.group_name) is None:
            raise alert_groups.GroupNotFound(req.group_name)
    key = dedup_key(rt.settings, req.reseller_id, req.alert_id)
    held = False
    if req.dedup_ttl_s > 0:
        acquired = _acquire(rt, key, req.dedup_ttl_s)
        if acquired is False:
            with rt.pool.connection() as conn:
                latest = _latest(conn, req.reseller_id, req.alert_id)
            result = FireResult("deduplicated", req.alert_id, latest)
            _log_fire(req, result, "dedup_window")
            return result
        held = acquired is True
    result = None
    try:
        with rt.pool.connection() as conn, conn.transaction() as tx:
            result = _open(conn, rt.settings, req)
            if not result.leads:
                raise psycopg.Rollback(tx)  # nothing called: leave no trace but the log
    finally:
        if held and (result is None or not result.leads):
            _release(rt, key)
    assert result is not None
    _log_fire(req, result)
    return result


def fire_from_monitor(
    conn: Connection, rt: Runtime, reseller_id: str, group_name: str, alert_id: str, message: str
) -> FireResult:
    """The health monitor's fire (`dispatcher.monitor`), through the same path as the
    API. `conn` is not used: `fire` takes its own transactions so that the dedup key is
    released only after the alert's transaction has ended."""
    del conn
    req = FireRequest(
        reseller_id=reseller_id,
        alert_id=alert_id,
        group_name=group_name,
        message=message,
        actor="switchboard-monitor",
    )
    return fire(rt, req)


def _latest(conn: Connection, reseller_id: str, alert_id: str) -> int | None:
    row = conn.execute(
        "SELECT id FROM alerts WHERE reseller_id = %s AND alert_id = %s ORDER BY id DESC LIMIT 1",
        (reseller_id, alert_id),
    ).fetchone()
    return row["id"] if row else None


def _open(conn: Connection, settings: Settings, req: FireRequest) -> FireResult:
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"alert-fire:{req.reseller_id}",)
    )
    group = alert_groups.get(conn, req.reseller_id, req.group_name)
    if group is None:  # deleted since the first look
        raise alert_groups.GroupNotFound(req.group_name)
    open_alert = conn.execute(
        "SELECT id FROM alerts WHERE reseller_id = %s AND alert_id = %s AND status <> 'resolved'",
        (req.reseller_id, req.alert_id),
    ).fetchone()
    if open_alert is not None:
        return FireResult("deduplicated", req.alert_id, open_alert["id"])
    members: list[dict[str, Any]] = group["members"]
    if not members:
        return FireResult("no_members", req.alert_id)
    first = range(len(members)) if req.mode == "parallel" else range(1)
    allowed, capped = _flood_check(conn, settings, req, list(first))
    failed = [{"member_index": i, "reason": FLOOD_CAP, "cap": cap} for i, cap in capped]
    if not allowed:
        return FireResult("failed", req.alert_id, failed=failed)
    alert = conn.execute(
        """
        INSERT INTO alerts (reseller_id, alert_id, group_name, message, mode, status, rounds,
                            members, template, merchant_id, payload)
        VALUES (%s, %s, %s, %s, %s, 'calling', %s, %s, %s, %s, %s)
        ON CONFLICT (reseller_id, alert_id) WHERE status <> 'resolved' DO NOTHING
        RETURNING *
        """,
        (
            req.reseller_id,
            req.alert_id,
            group["name"],
            req.message,
            req.mode,
            req.rounds,
            Jsonb(members),
            req.template,
            req.merchant_id,
            Jsonb(req.extra_payload),
        ),
    ).fetchone()
    if alert is None:  # opened by a path that does not take the lock
        return FireResult(
            "deduplicated", req.alert_id, _latest(conn, req.reseller_id, req.alert_id)
        )
    escalation.record(
        conn,
        alert["id"],
        "fired",
        detail={
            "group": group["name"],
            "mode": req.mode,
            "rounds": req.rounds,
            "members": len(members),
            "template": req.template,
            "by": req.actor,
            "dedup_ttl_seconds": req.dedup_ttl_s,
        },
    )
    result = FireResult("queued", req.alert_id, alert["id"], failed=failed)
    for i, cap in capped:
        member = members[i]
        escalation.record(
            conn,
            alert["id"],
            "capped",
            member_index=i,
            member_name=member.get("name"),
            phone=member["phone"],
            detail={"reason": FLOOD_CAP, "cap": cap},
        )
    for i in allowed:
        lead_id = escalation.call_member(conn, alert, i)
        if lead_id is None:
            result.failed.append({"member_index": i, "reason": "not_created"})
        else:
            result.leads.append(lead_id)
    if not result.leads:
        result.status, result.alert = "failed", None
    return result


def _flood_check(
    conn: Connection, settings: Settings, req: FireRequest, indexes: list[int]
) -> tuple[list[int], list[tuple[int, str]]]:
    """Which of `indexes` may be called now, and which are over a cap (with which)."""
    used = conn.execute(
        """
        SELECT count(*) AS per_reseller,
               count(*) FILTER (WHERE a.alert_id = %(alert_id)s) AS per_alert
        FROM alerts a JOIN leads l ON l.alert_ref = a.id
        WHERE a.reseller_id = %(reseller)s
          AND a.updated_at > now() - make_interval(secs => %(window)s)
          AND l.created_at > now() - make_interval(secs => %(window)s)
        """,
        {"reseller": req.reseller_id, "alert_id": req.alert_id, "window": settings.alert_window_s},
    ).fetchone()
    assert used is not None
    room_reseller = settings.alert_calls_per_window - used["per_reseller"]
    room_alert = settings.alert_calls_per_alert - used["per_alert"]
    allowed: list[int] = []
    capped: list[tuple[int, str]] = []
    for i in indexes:
        if room_reseller <= 0:
            capped.append((i, "reseller_window"))
        elif room_alert <= 0:
            capped.append((i, "alert_window"))
        else:
            allowed.append(i)
            room_reseller, room_alert = room_reseller - 1, room_alert - 1
    for _, cap in capped:
        metrics.ALERT_CALLS_CAPPED.labels(reason=cap).inc()
    return allowed, capped


def _log_fire(req: FireRequest, result: FireResult, why: str | None = None) -> None:
    """One line per fire; counts only, never a member's phone."""
    (log.warning if result.status == "failed" or result.failed else log.info)(
        "alert_fire",
        alert_id=req.alert_id,
        reseller_id=req.reseller_id,
        group=req.group_name,
        mode=req.mode,
        status=result.status,
        dedup=why,
        alert=result.alert,
        leads_queued=len(result.leads),
        failed=len(result.failed),
        capped=sum(1 for f in result.failed if f["reason"] == FLOOD_CAP),
    )


# --- reading and resolving ---------------------------------------------------------------


def get(conn: Connection, reseller_id: str | None, alert_ref: int) -> Row | None:
    """The alert if `reseller_id` (None: any, an admin) may see it; else None (a 404)."""
    return conn.execute(
        "SELECT * FROM alerts WHERE id = %(id)s AND (%(r)s::text IS NULL OR reseller_id = %(r)s)",
        {"id": alert_ref, "r": reseller_id},
    ).fetchone()


def timeline(conn: Connection, alert_ref: int) -> list[Row]:
    return conn.execute(
        "SELECT * FROM alert_events WHERE alert_ref = %s ORDER BY id", (alert_ref,)
    ).fetchall()


def list_alerts(
    conn: Connection,
    reseller_id: str | None,
    *,
    status: str | None = None,
    limit: int = leads.DEFAULT_PAGE,
    cursor: str | None = None,
) -> Page:
    """One page of alerts, newest first (keyset on id, like leads). InvalidInput for a
    bad status, limit or cursor."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    errors: list[FieldError] = []
    if not leads.MIN_PAGE <= limit <= leads.MAX_PAGE:
        errors.append(FieldError("limit", f"must be between {leads.MIN_PAGE} and {leads.MAX_PAGE}"))
    if reseller_id is not None:
        clauses.append("reseller_id = %(reseller)s")
        params["reseller"] = reseller_id
    if status is not None and status.strip():
        if status not in ALERT_STATUSES:
            errors.append(FieldError("status", f"must be one of {', '.join(ALERT_STATUSES)}"))
        clauses.append("status = %(status)s")
        params["status"] = status
    leads.add_cursor(cursor, clauses, params, errors)
    if errors:
        raise InvalidInput(errors)
    return leads.fetch_page(conn, "alerts", clauses, params, limit)


def resolve(
    conn: Connection, reseller_id: str | None, alert_ref: int, actor: str | None
) -> Row | None:
    """Close the alert and cancel its calls that have not started; a call in progress
    finishes but escalates no further. None when not visible; Conflict when resolved."""
    alert = conn.execute(
        "SELECT * FROM alerts WHERE id = %(id)s"
        " AND (%(r)s::text IS NULL OR reseller_id = %(r)s) FOR UPDATE",
        {"id": alert_ref, "r": reseller_id},
    ).fetchone()
    if alert is None:
        return None
    if alert["status"] == "resolved":
        raise Conflict("alert is already resolved")
    resolved = conn.execute(
        "UPDATE alerts SET status = 'resolved', closed_at = now(), updated_at = now()"
        " WHERE id = %s RETURNING *",
        (alert_ref,),
    ).fetchone()
    cancelled = escalation.cancel_pending(conn, alert_ref, "alert_resolved")
    escalation.record(
        conn,
        alert_ref,
        "resolved",
        detail={"by": actor, "from": alert["status"], "cancelled_leads": cancelled},
    )
    log.info(
        "alert_resolved",
        alert_id=alert["alert_id"],
        reseller_id=alert["reseller_id"],
        alert=alert_ref,
        cancelled=len(cancelled),
    )
    return resolved


# --- serialisation ----------------------------------------------------------------------


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def event_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A timeline step; the phone masked, as the timeline is read by whole teams."""
    return {
        "at": _iso(row["at"]),
        "kind": row["kind"],
        "member_index": row["member_index"],
        "member_name": row["member_name"],
        "phone": mask_phone(row["phone"]) if row["phone"] else None,
        "lead_id": row["lead_id"],
        "attempt_id": str(row["attempt_id"]) if row["attempt_id"] else None,
        "outcome": row["outcome"],
        "detail": row["detail"],
    }


def alert_json(row: Mapping[str, Any], events: list[Row] | None = None) -> dict[str, Any]:
    """The alert as the API returns it; `timeline` only when `events` are given."""
    out: dict[str, Any] = {
        "id": row["id"],
        "alert_id": row["alert_id"],
        "reseller_id": row["reseller_id"],
        "merchant_id": row["merchant_id"],
        "status": row["status"],
        "mode": row["mode"],
        "group": row["group_name"],
        "template": row["template"],
        "message": row["message"],
        "rounds": row["rounds"],
        "round": row["round_no"],
        "acknowledged_by": row["acknowledged_by"],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
        "closed_at": _iso(row["closed_at"]),
    }
    if events is not None:
        out["timeline"] = [event_json(e) for e in events]
    return out
