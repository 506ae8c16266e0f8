"""Alert groups: the on-call people an alert calls, in call order, per reseller.

A group is `{name, members: [{phone, name}]}`, unique by name within a reseller. Every
change (created, updated, deleted) appends an `alert_group_changes` row with the new
members and the token subject that made it, so "who took me off the rota, and when" has
an answer. Alerts copy the members when they fire, so editing or deleting a group never
changes an alert already calling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import phonenumbers
import structlog
from psycopg import Connection
from psycopg.types.json import Jsonb

from dispatcher import leads
from dispatcher.leads import Conflict, FieldError, InvalidInput

log = structlog.get_logger(__name__)

Row = dict[str, Any]

MAX_MEMBERS = 50  # more than any rota; a parallel fire to all of them is already a flood


class GroupNotFound(LookupError):
    """No group of that name for the reseller (HTTP 404, whoever else may have one)."""


def validate_name(value: Any, field: str = "name") -> str:
    """A name, trimmed; InvalidInput naming `field` when blank or too long."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput([FieldError(field, "is required and must not be blank")])
    value = value.strip()
    if len(value) > leads.MAX_TEXT:
        raise InvalidInput([FieldError(field, f"must be at most {leads.MAX_TEXT} characters")])
    return value


def validate_members(members: Any) -> list[dict[str, str]]:
    """Members as stored: phone in canonical E.164, name trimmed, in the given order.

    Every bad field is reported at once as `members[i].phone` / `members[i].name`; the
    same phone twice is refused, as it would ring one person twice per round."""
    if not isinstance(members, Sequence) or isinstance(members, str):
        raise InvalidInput([FieldError("members", "must be a list of {phone, name}")])
    if len(members) > MAX_MEMBERS:
        raise InvalidInput([FieldError("members", f"must list at most {MAX_MEMBERS} members")])
    out: list[dict[str, str]] = []
    errors: list[FieldError] = []
    seen: dict[str, int] = {}
    for i, member in enumerate(members):
        if not isinstance(member, Mapping):
            errors.append(FieldError(f"members[{i}]", "must be an object {phone, name}"))
            continue
        unknown = sorted(set(member) - {"phone", "name"})
        errors.extend(FieldError(f"members[{i}].{k}", "is not a known field") for k in unknown)
        phone = None
        try:
            number = leads.parse_e164(member.get("phone"))
            phone = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        except ValueError as exc:
            errors.append(FieldError(f"members[{i}].phone", str(exc)))
        if phone is not None and phone in seen:
            errors.append(FieldError(f"members[{i}].phone", f"repeats members[{seen[phone]}]"))
        elif phone is not None:
            seen[phone] = i
        try:
            name = validate_name(member.get("name"), f"members[{i}].name")
        except InvalidInput as exc:
            errors.extend(exc.errors)
            continue
        if phone is not None:
            out.append({"phone": phone, "name": name})
    if errors:
        raise InvalidInput(errors)
    return out


def _audit(conn: Connection, group: Row, action: str, actor: str | None) -> None:
    conn.execute(
        "INSERT INTO alert_group_changes (group_id, reseller_id, name, action, members, actor)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (group["id"], group["reseller_id"], group["name"], action, Jsonb(group["members"]), actor),
    )


def create(conn: Connection, reseller_id: str, name: Any, members: Any, actor: str | None) -> Row:
    """A new group; Conflict (409) when the reseller already has one of that name."""
    name, members = validate_name(name), validate_members(members)
    group = conn.execute(
        "INSERT INTO alert_groups (reseller_id, name, members) VALUES (%s, %s, %s)"
        " ON CONFLICT (reseller_id, name) DO NOTHING RETURNING *",
        (reseller_id, name, Jsonb(members)),
    ).fetchone()
    if group is None:
        raise Conflict(f"alert group {name!r} already exists")
    _audit(conn, group, "created", actor)
    log.info("alert_group_created", reseller_id=reseller_id, group=name, members=len(members))
    return group


def get(conn: Connection, reseller_id: str, name: str, *, lock: bool = False) -> Row | None:
    """The reseller's group of that name (None for any other reseller's: a 404)."""
    return conn.execute(
        "SELECT * FROM alert_groups WHERE reseller_id = %s AND name = %s"
        + (" FOR UPDATE" if lock else ""),
        (reseller_id, name),
    ).fetchone()


def list_groups(conn: Connection, reseller_id: str | None) -> list[Row]:
    """Groups by name; reseller_id None lists every reseller's (an admin)."""
    return conn.execute(
        "SELECT * FROM alert_groups WHERE %(r)s::text IS NULL OR reseller_id = %(r)s"
        " ORDER BY reseller_id, name",
        {"r": reseller_id},
    ).fetchall()


def replace(conn: Connection, reseller_id: str, name: str, members: Any, actor: str | None) -> Row:
    """Replace the members (PUT); GroupNotFound when the reseller has no such group."""
    members = validate_members(members)
    group = conn.execute(
        "UPDATE alert_groups SET members = %s, updated_at = now()"
        " WHERE reseller_id = %s AND name = %s RETURNING *",
        (Jsonb(members), reseller_id, name),
    ).fetchone()
    if group is None:
        raise GroupNotFound(name)
    _audit(conn, group, "updated", actor)
    log.info("alert_group_updated", reseller_id=reseller_id, group=name, members=len(members))
    return group


def delete(conn: Connection, reseller_id: str, name: str, actor: str | None) -> Row:
    """Delete the group; its last members stay in the audit row. Alerts already fired
    keep calling their own copy of the members."""
    group = conn.execute(
        "DELETE FROM alert_groups WHERE reseller_id = %s AND name = %s RETURNING *",
        (reseller_id, name),
    ).fetchone()
    if group is None:
        raise GroupNotFound(name)
    _audit(conn, group, "deleted", actor)
    log.info("alert_group_deleted", reseller_id=reseller_id, group=name)
    return group


def changes(conn: Connection, reseller_id: str, name: str) -> list[Row]:
    """The audit trail of every group the reseller has had under that name, oldest first."""
    return conn.execute(
        "SELECT * FROM alert_group_changes WHERE reseller_id = %s AND name = %s ORDER BY id",
        (reseller_id, name),
    ).fetchall()


def group_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The group as the API returns it. Its owners configured these phones, so they are
    shown in full here (unlike logs and alert timelines)."""
    return {
        "name": row["name"],
        "reseller_id": row["reseller_id"],
        "members": row["members"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def change_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "action": row["action"],
        "members": row["members"],
        "actor": row["actor"],
        "at": row["at"].isoformat(),
    }
