"""Outbound number routes. Admins manage every number, including the shared pool (no
reseller); a reseller manages its own numbers and sees the shared ones."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, patch, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, PermissionDeniedException
from litestar.params import FromPath, JSONBody
from litestar.security.jwt import Token

from dispatcher import numbers
from dispatcher.runtime import Runtime
from web.auth import Principal, require_roles
from web.schemas import NumberIn, NumberPatch, to_item

AuthRequest = Request[Principal, Token, Any]


class NumberController(Controller):
    path = "/v1/numbers"
    tags = ["numbers"]
    guards = [require_roles("admin", "reseller")]

    @post(sync_to_thread=True, status_code=201, summary="Add an outbound number")
    def create_number(
        self, data: JSONBody[NumberIn], request: AuthRequest, runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        item = to_item(data)
        user = request.user
        if not user.is_admin:
            # Omitted means the reseller's own; null (the shared pool) or another is not theirs.
            item.setdefault("reseller_id", user.reseller_id)
            if item["reseller_id"] != user.reseller_id:
                raise PermissionDeniedException("only admins manage other or shared numbers")
        with runtime.pool.connection() as conn, conn.transaction():
            return numbers.number_json(numbers.create(conn, item))

    @get(sync_to_thread=True, summary="List the numbers visible to the caller")
    def list_numbers(
        self, request: AuthRequest, runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        visible_to = None if request.user.is_admin else request.user.reseller_id
        with runtime.pool.connection() as conn, conn.transaction():
            rows = numbers.list_visible(conn, visible_to)
        return {"items": [numbers.number_json(r) for r in rows]}

    @patch("/{number_id:int}", sync_to_thread=True, summary="Change a number")
    def patch_number(
        self,
        number_id: FromPath[int],
        data: JSONBody[NumberPatch],
        request: AuthRequest,
        runtime: NamedDependency[Runtime],
    ) -> dict[str, Any]:
        changes = to_item(data)
        user = request.user
        with runtime.pool.connection() as conn, conn.transaction():
            current = numbers.get(conn, number_id)
            visible = current is not None and (
                user.is_admin or current["reseller_id"] in (None, user.reseller_id)
            )
            if current is None or not visible:
                raise NotFoundException(f"no number {number_id}")
            if not user.is_admin and (
                current["reseller_id"] is None
                or changes.get("reseller_id", user.reseller_id) != user.reseller_id
            ):
                raise PermissionDeniedException("only admins manage other or shared numbers")
            row = numbers.patch(conn, number_id, changes)
            assert row is not None
            return numbers.number_json(row)
