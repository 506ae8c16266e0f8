"""Alert group routes. Admins, resellers and alert systems read a reseller's groups (an
alert system must see what it can fire into); only admins and resellers change them,
since a group decides whose phone rings at night. Merchants have no access. An admin
names the reseller with `reseller_id` (body or query); for everyone else it is the
token's, and another reseller's group is a 404."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post, put
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, PermissionDeniedException
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.security.jwt import Token
from msgspec import Meta, Struct, field

from dispatcher import alert_groups
from dispatcher.leads import FieldError, InvalidInput
from dispatcher.runtime import Runtime
from web.auth import Principal, require_roles

AuthRequest = Request[Principal, Token, Any]

READERS = ("admin", "reseller", "alert_system")
WRITERS = ("admin", "reseller")

_RESELLER = Meta(description="admin only (required for admins); otherwise from the token")
_RESELLER_Q = QueryParameter(description="admin: whose groups; others: their own")


class MemberIn(Struct, forbid_unknown_fields=True):
    phone: Annotated[str, Meta(description="E.164, a valid number", examples=["+14155550123"])]
    name: Annotated[str, Meta(description="who answers; shown in the alert's timeline")]


class GroupIn(Struct, forbid_unknown_fields=True, kw_only=True):
    """A new group. An empty member list is allowed: fires into it answer `no_members`."""

    name: Annotated[str, Meta(description="unique per reseller")]
    members: Annotated[list[MemberIn], Meta(description="in call order")] = field(
        default_factory=list
    )
    reseller_id: Annotated[str, _RESELLER] | None = None


class GroupPut(Struct, forbid_unknown_fields=True, kw_only=True):
    """The group's new members (a full replacement). Renaming is not supported: `name`,
    when given, must be the one in the path."""

    members: Annotated[list[MemberIn], Meta(description="in call order")]
    name: str | None = None
    reseller_id: Annotated[str, _RESELLER] | None = None


def _members(members: list[MemberIn]) -> list[dict[str, str]]:
    return [{"phone": m.phone, "name": m.name} for m in members]


def reseller_of(user: Principal, given: str | None) -> str:
    """The reseller a request acts for: an admin must name one; anyone else gets their
    own, and naming another is a 403 (as for leads)."""
    given = given.strip() if given and given.strip() else None
    if user.is_admin:
        if given is None:
            raise InvalidInput([FieldError("reseller_id", "is required for an admin")])
        return given
    if given is not None and given != user.reseller_id:
        raise PermissionDeniedException("reseller_id is not yours")
    assert user.reseller_id is not None  # every role but admin carries one
    return user.reseller_id


def _not_found(name: str) -> NotFoundException:
    return NotFoundException(f"alert group {name!r} not found")


class AlertGroupController(Controller):
    path = "/v1/alert-groups"
    tags = ["alerts"]
    guards = [require_roles(*READERS)]

    @post(
        sync_to_thread=True,
        status_code=201,
        guards=[require_roles(*WRITERS)],
        summary="Create an alert group",
    )
    def create_group(
        self, data: JSONBody[GroupIn], request: AuthRequest, runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        """201 with the group; 409 when the reseller already has a group of that name."""
        reseller = reseller_of(request.user, data.reseller_id)
        with runtime.pool.connection() as conn, conn.transaction():
            group = alert_groups.create(
                conn, reseller, data.name, _members(data.members), request.user.sub
            )
        return alert_groups.group_json(group)

    @get(sync_to_thread=True, summary="List alert groups")
    def list_groups(
        self,
        request: AuthRequest,
        runtime: NamedDependency[Runtime],
        reseller_id: Annotated[str | None, _RESELLER_Q] = None,
    ) -> dict[str, Any]:
        """An admin without `reseller_id` sees every reseller's groups."""
        user = request.user
        scope = (reseller_id or None) if user.is_admin else reseller_of(user, reseller_id)
        with runtime.pool.connection() as conn, conn.transaction():
            rows = alert_groups.list_groups(conn, scope)
        return {"items": [alert_groups.group_json(r) for r in rows]}

    @get("/{name:str}", sync_to_thread=True, summary="Read an alert group")
    def get_group(
        self,
        name: FromPath[str],
        request: AuthRequest,
        runtime: NamedDependency[Runtime],
        reseller_id: Annotated[str | None, _RESELLER_Q] = None,
    ) -> dict[str, Any]:
        reseller = reseller_of(request.user, reseller_id)
        with runtime.pool.connection() as conn, conn.transaction():
            group = alert_groups.get(conn, reseller, name)
        if group is None:
            raise _not_found(name)
        return alert_groups.group_json(group)

    @get("/{name:str}/changes", sync_to_thread=True, summary="An alert group's audit trail")
    def get_changes(
        self,
        name: FromPath[str],
        request: AuthRequest,
        runtime: NamedDependency[Runtime],
        reseller_id: Annotated[str | None, _RESELLER_Q] = None,
    ) -> dict[str, Any]:
        """Every change under this name, oldest first (also after the group was deleted)."""
        reseller = reseller_of(request.user, reseller_id)
        with runtime.pool.connection() as conn, conn.transaction():
            rows = alert_groups.changes(conn, reseller, name)
        if not rows:
            raise _not_found(name)
        return {"items": [alert_groups.change_json(r) for r in rows]}

    @put(
        "/{name:str}",
        sync_to_thread=True,
        guards=[require_roles(*WRITERS)],
        summary="Replace an alert group's members",
    )
    def replace_group(
        self,
        name: FromPath[str],
        data: JSONBody[GroupPut],
        request: AuthRequest,
        runtime: NamedDependency[Runtime],
    ) -> dict[str, Any]:
        if data.name is not None and data.name.strip() != name:
            raise InvalidInput(
                [FieldError("name", "must match the path; renaming is not supported")]
            )
        reseller = reseller_of(request.user, data.reseller_id)
        try:
            with runtime.pool.connection() as conn, conn.transaction():
                group = alert_groups.replace(
                    conn, reseller, name, _members(data.members), request.user.sub
                )
        except alert_groups.GroupNotFound:
            raise _not_found(name) from None
        return alert_groups.group_json(group)

    @delete(
        "/{name:str}",
        sync_to_thread=True,
        status_code=200,
        guards=[require_roles(*WRITERS)],
        summary="Delete an alert group",
    )
    def delete_group(
        self,
        name: FromPath[str],
        request: AuthRequest,
        runtime: NamedDependency[Runtime],
        reseller_id: Annotated[str | None, _RESELLER_Q] = None,
    ) -> dict[str, Any]:
        """200 with the deleted group. Alerts already fired keep their copy of it."""
        reseller = reseller_of(request.user, reseller_id)
        try:
            with runtime.pool.connection() as conn, conn.transaction():
                group = alert_groups.delete(conn, reseller, name, request.user.sub)
        except alert_groups.GroupNotFound:
            raise _not_found(name) from None
        return alert_groups.group_json(group)
