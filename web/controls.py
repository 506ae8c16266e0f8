"""Pause and resume routes. An admin controls any scope; a reseller only itself and the
numbers it owns (a shared number's pause would stop other resellers too, so it is 403;
a number it cannot see is 404, whether it exists or not, so ids do not leak)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, PermissionDeniedException
from litestar.params import JSONBody
from litestar.security.jwt import Token
from msgspec import Meta, Struct
from psycopg import Connection

from dispatcher import controls, numbers
from dispatcher.controls import Target
from dispatcher.runtime import Runtime
from web.auth import Principal, require_roles

AuthRequest = Request[Principal, Token, Any]


class ControlIn(Struct, forbid_unknown_fields=True):
    scope: Literal["global", "reseller", "number"]
    id: (
        Annotated[
            str | int,
            Meta(
                description="global: absent or null; reseller: its id (a reseller's own by"
                " default); number: the outbound number's id"
            ),
        ]
        | None
    ) = None


def _target(user: Principal, data: ControlIn) -> Target:
    """The validated target; a reseller naming no reseller means itself."""
    scope_id = data.id
    if not user.is_admin and data.scope == "reseller" and scope_id is None:
        scope_id = user.reseller_id
    return controls.target(data.scope, scope_id)


def _authorize(conn: Connection, user: Principal, t: Target) -> None:
    if user.is_admin:
        return
    if t.scope == "reseller":
        if t.scope_id != user.reseller_id:
            raise PermissionDeniedException("reseller id is not yours")
    elif t.scope == "number":
        number = numbers.get(conn, t.number_id)
        if number is None or number["reseller_id"] not in (None, user.reseller_id):
            raise NotFoundException(f"no number {t.number_id}")
        if number["reseller_id"] is None:
            raise PermissionDeniedException("only admins pause shared numbers")
    else:
        raise PermissionDeniedException("only admins pause or resume all dispatch")


class ControlController(Controller):
    path = "/v1/controls"
    tags = ["controls"]
    guards = [require_roles("admin", "reseller")]

    @post("/pause", sync_to_thread=True, status_code=200, summary="Pause dispatch in a scope")
    def pause(
        self, data: JSONBody[ControlIn], request: AuthRequest, runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        """Leads in the scope wait in BACKLOG until it is resumed; nothing is lost."""
        t = _target(request.user, data)
        with runtime.pool.connection() as conn, conn.transaction():
            _authorize(conn, request.user, t)
            return controls.control_json(controls.pause(conn, t.scope, t.scope_id))

    @post("/resume", sync_to_thread=True, status_code=200, summary="Resume dispatch in a scope")
    def resume(
        self, data: JSONBody[ControlIn], request: AuthRequest, runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        t = _target(request.user, data)
        with runtime.pool.connection() as conn, conn.transaction():
            _authorize(conn, request.user, t)
            return controls.control_json(controls.resume(conn, t.scope, t.scope_id))

    @get(sync_to_thread=True, summary="The controls that apply to the caller")
    def list_controls(
        self, request: AuthRequest, runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        user = request.user
        with runtime.pool.connection() as conn, conn.transaction():
            rows = controls.list_controls(conn, None if user.is_admin else user.reseller_id)
        return {
            "items": [controls.control_json(r) for r in rows],
            "paused": controls.paused_json(controls.summary(rows)),
        }
