"""Voice-alert escalation: who is called for an alert, and what happens when a call ends.

An alert calls the members of its group as ordinary leads (priority 10, the alert
template, calling hours and frequency caps off), linked by `leads.alert_ref`.
`parallel` calls everyone at once; `sequential` calls one member at a time, moving on
when a call ends without an acknowledgement, and repeats the round `rounds` times. A key
press reported by the provider acknowledges: the alert stops and every other pending
call of it is cancelled. Every step is an `alert_events` row, the alert's timeline.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import structlog
from psycopg import Connection
from psycopg.types.json import Jsonb

from dispatcher import lifecycle
from dispatcher.lifecycle import NewLead

log = structlog.get_logger(__name__)

Row = dict[str, Any]
OPEN_LEAD = ("BACKLOG", "QUEUED", "DIALING", "IN_CALL")


def record(conn: Connection, alert_ref: int, kind: str, **fields: Any) -> None:
    """Append one step to the alert's timeline."""
    columns = ["alert_ref", "kind", *fields]
    values = [alert_ref, kind, *(Jsonb(v) if k == "detail" else v for k, v in fields.items())]
    conn.execute(
        f"INSERT INTO alert_events ({', '.join(columns)})"
        f" VALUES ({', '.join(['%s'] * len(values))})",
        values,
    )


def call_member(conn: Connection, alert: Row, index: int) -> int | None:
    """Create the lead that calls member `index` of the alert; its id (None when the
    lead was created SKIPPED, e.g. the member's number is on a do-not-call list)."""
    member = alert["members"][index]
    lead = NewLead(
        reseller_id=alert["reseller_id"],
        merchant_id=alert["merchant_id"],
        phone=member["phone"],
        template=alert["template"],
        execution_mode="telephony_alert",
        customer_name=member.get("name"),
        payload={
            **(alert["payload"] or {}),
            "alert_id": alert["alert_id"],
            "alert_message": alert["message"],
            "member_name": member.get("name"),
        },
        priority=10,
        # Sequential escalation moves on to the next member instead of retrying this one.
        max_attempts=1 if alert["mode"] == "sequential" else None,
        next_attempt_at=dt.datetime.now(dt.UTC),
        alert_ref=alert["id"],
    )
    (lead_id,) = lifecycle.create_leads(conn, [lead])
    record(
        conn,
        alert["id"],
        "called",
        member_index=index,
        member_name=member.get("name"),
        phone=member["phone"],
        lead_id=lead_id,
        detail={"round": alert["round_no"]},
    )
    return lead_id


def after_call(
    conn: Connection,
    alert_ref: int,
    lead_id: int,
    attempt_id: uuid.UUID,
    outcome: str,
    digits: str | None,
    lead_status: str | None,
) -> None:
    """Called by the lifecycle, in its transaction, when a call of an alert's lead ended."""
    alert = conn.execute("SELECT * FROM alerts WHERE id = %s FOR UPDATE", (alert_ref,)).fetchone()
    if alert is None:
        return
    member = conn.execute(
        "SELECT member_index, member_name, phone FROM alert_events"
        " WHERE alert_ref = %s AND lead_id = %s AND kind = 'called' ORDER BY id DESC LIMIT 1",
        (alert_ref, lead_id),
    ).fetchone() or {"member_index": None, "member_name": None, "phone": None}
    record(
        conn,
        alert_ref,
        "call_ended",
        **member,
        lead_id=lead_id,
        attempt_id=attempt_id,
        outcome=outcome,
        detail={"digits": digits} if digits else None,
    )
    if alert["status"] != "calling":
        if lead_status == "BACKLOG":  # a retry of a call that ended after the alert closed
            cancel_pending(conn, alert_ref, f"alert_{alert['status']}")
        return
    if digits:
        _acknowledge(conn, alert, lead_id, member, digits)
    elif lead_status != "BACKLOG":  # this member's calls are over, unacknowledged
        _move_on(conn, alert)


def _acknowledge(conn: Connection, alert: Row, lead_id: int, member: Row, digits: str) -> None:
    by = {"member_index": member["member_index"], "name": member["member_name"],
          "lead_id": lead_id, "digits": digits}  # fmt: skip
    conn.execute(
        "UPDATE alerts SET status = 'acknowledged', acknowledged_by = %s, updated_at = now()"
        " WHERE id = %s",
        (Jsonb(by), alert["id"]),
    )
    record(conn, alert["id"], "acknowledged", **member, lead_id=lead_id)
    cancel_pending(conn, alert["id"], "alert_acknowledged", keep=lead_id)


def cancel_pending(
    conn: Connection, alert_ref: int, reason: str, keep: int | None = None
) -> list[int]:
    """Cancel the alert's calls that have not started (pending retries, queued members)."""
    rows = conn.execute(
        "SELECT id FROM leads WHERE alert_ref = %s AND status IN ('BACKLOG', 'QUEUED', 'DIALING')"
        " AND id IS DISTINCT FROM %s ORDER BY id",
        (alert_ref, keep),
    ).fetchall()
    cancelled = []
    for row in rows:
        if lifecycle.cancel(conn, row["id"], reason=reason) is not None:
            cancelled.append(row["id"])
            record(conn, alert_ref, "cancelled", lead_id=row["id"], detail={"reason": reason})
    return cancelled


def _move_on(conn: Connection, alert: Row) -> None:
    if alert["mode"] == "parallel":
        still = conn.execute(
            "SELECT 1 FROM leads WHERE alert_ref = %s AND status = ANY(%s) LIMIT 1",
            (alert["id"], list(OPEN_LEAD)),
        ).fetchone()
        if still is None:
            _exhaust(conn, alert)
        return
    index, round_no = alert["member_index"] + 1, alert["round_no"]
    if index >= len(alert["members"]):
        index, round_no = 0, round_no + 1
    if round_no > alert["rounds"]:
        _exhaust(conn, alert)
        return
    conn.execute(
        "UPDATE alerts SET member_index = %s, round_no = %s, updated_at = now() WHERE id = %s",
        (index, round_no, alert["id"]),
    )
    call_member(conn, {**alert, "member_index": index, "round_no": round_no}, index)


def _exhaust(conn: Connection, alert: Row) -> None:
    conn.execute(
        "UPDATE alerts SET status = 'exhausted', updated_at = now() WHERE id = %s", (alert["id"],)
    )
    record(conn, alert["id"], "exhausted")
    log.warning("alert_exhausted", alert_id=alert["alert_id"], reseller_id=alert["reseller_id"])
