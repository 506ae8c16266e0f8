"""Do-not-call routes. An admin manages the global list and any reseller's; a reseller
(or its merchants) adds to and reads its own list, and sees the global entries that also
stop its calls. Taking a number off a list is for admins and resellers only."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, PermissionDeniedException
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.security.jwt import Token
from msgspec import UNSET, Meta, Struct, UnsetType

from dispatcher import dnc, leads
from dispatcher.runtime import Runtime
from web.auth import Principal, require_roles

AuthRequest = Request[Principal, Token, Any]


class DncIn(Struct, forbid_unknown_fields=True, kw_only=True):
    """Numbers to list; all are stored or, if one is invalid, none."""

    phones: Annotated[
        list[str],
        Meta(
            min_length=1,
            max_length=dnc.MAX_PHONES,
            description="E.164 numbers",
            examples=[["+14155550123"]],
        ),
    ]
    reseller_id: (
        Annotated[
            str,
            Meta(description="admin: omitted or null is the global list; others: their own"),
        ]
        | UnsetType
        | None
    ) = UNSET


def _own_list(user: Principal, reseller_id: str | None) -> str | None:
    """The reseller list a non-admin may touch: its own (blank or omitted means so)."""
    if reseller_id is not None and reseller_id.strip() and reseller_id != user.reseller_id:
        raise PermissionDeniedException("reseller_id is not yours")
    return user.reseller_id


class DncController(Controller):
    path = "/v1/dnc"
    tags = ["do-not-call"]
    guards = [require_roles("admin", "reseller", "merchant")]

    @post(sync_to_thread=True, status_code=200, summary="Put numbers on a do-not-call list")
    def add_numbers(
        self, data: JSONBody[DncIn], request: AuthRequest, runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        """Idempotent: numbers already listed count as `already`. Waiting leads of the
        numbers end SKIPPED at once (`skipped_leads`)."""
        user = request.user
        if user.is_admin:
            list_id = None if isinstance(data.reseller_id, UnsetType) else data.reseller_id
        elif data.reseller_id is None:
            raise PermissionDeniedException("only admins manage the global list")
        else:
            given = None if isinstance(data.reseller_id, UnsetType) else data.reseller_id
            list_id = _own_list(user, given)
        with runtime.pool.connection() as conn, conn.transaction():
            result = dnc.add(conn, data.phones, list_id)
        return {
            "added": result.added,
            "already": result.already,
            "skipped_leads": result.skipped_leads,
        }

    @get(sync_to_thread=True, summary="List do-not-call entries, newest first")
    def list_entries(
        self,
        request: AuthRequest,
        runtime: NamedDependency[Runtime],
        phone: Annotated[str | None, QueryParameter(description="E.164; exact match")] = None,
        reseller_id: Annotated[
            str | None, QueryParameter(description="admin: see what this reseller sees")
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=leads.MAX_PAGE)] = leads.DEFAULT_PAGE,
        cursor: Annotated[str | None, QueryParameter(description="a page's next_cursor")] = None,
    ) -> dict[str, Any]:
        user = request.user
        scope = (reseller_id or None) if user.is_admin else _own_list(user, reseller_id)
        with runtime.pool.connection() as conn, conn.transaction():
            page = dnc.list_entries(conn, scope, phone, limit, cursor)
        return {"items": [dnc.entry_json(r) for r in page.items], "next_cursor": page.next_cursor}

    @delete(
        "/{phone:str}",
        sync_to_thread=True,
        status_code=200,
        guards=[require_roles("admin", "reseller")],
        summary="Take a number off a do-not-call list",
    )
    def remove_number(
        self,
        phone: FromPath[str],
        request: AuthRequest,
        runtime: NamedDependency[Runtime],
        reseller_id: Annotated[
            str | None, QueryParameter(description="admin: which list; omitted is the global")
        ] = None,
    ) -> dict[str, Any]:
        """`phone` URL-encoded (`%2B14155550123`). Leads already SKIPPED stay so."""
        user = request.user
        list_id = (reseller_id or None) if user.is_admin else _own_list(user, reseller_id)
        with runtime.pool.connection() as conn, conn.transaction():
            if not dnc.remove(conn, phone, list_id):
                raise NotFoundException(f"{phone} is not on this do-not-call list")
        return {"phone": dnc.normalise(phone), "reseller_id": list_id, "removed": True}
