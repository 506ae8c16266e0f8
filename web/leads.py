"""Lead routes: create (one or in bulk), read, list, cancel. Thin: the lead service in
`dispatcher.leads` validates and writes; this module decides who may do what."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, PermissionDeniedException
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.security.jwt import Token

from dispatcher import leads
from dispatcher.leads import Conflict, FieldError, InvalidInput
from dispatcher.runtime import Runtime
from web.auth import Principal, own_item, read_scope, require_roles
from web.schemas import BulkIn, LeadIn, convert_item, to_item

AuthRequest = Request[Principal, Token, Any]

# Large enough for 10,000 leads with modest payloads.
BULK_MAX_BODY = 64 * 1024 * 1024


def _item_for(principal: Principal, raw: Any) -> dict[str, Any] | InvalidInput:
    """One bulk item decoded and owned, or why not (it fails alone, not the request)."""
    decoded = convert_item(raw, LeadIn)
    if isinstance(decoded, FieldError):
        return InvalidInput([decoded])
    try:
        return own_item(principal, to_item(decoded))
    except PermissionDeniedException as exc:
        extra = exc.extra if isinstance(exc.extra, dict) else {}
        return InvalidInput([FieldError(extra.get("field", "reseller_id"), "is another tenant's")])


class LeadController(Controller):
    path = "/v1/leads"
    tags = ["leads"]
    guards = [require_roles("admin", "reseller", "merchant")]

    @post(sync_to_thread=True, status_code=201, summary="Create a lead")
    def create_lead(
        self, data: JSONBody[LeadIn], request: AuthRequest, runtime: NamedDependency[Runtime]
    ) -> Response[dict[str, Any]]:
        """201 with the new lead; 200 with the first one when `idempotency_key` repeats
        with the same body; 409 when it repeats with another body."""
        item = own_item(request.user, to_item(data))
        with runtime.pool.connection() as conn, conn.transaction():
            lead, created = leads.create(conn, item)
            body = leads.lead_json(lead, leads.attempts(conn, [lead["id"]])[lead["id"]])
        return Response(body, status_code=201 if created else 200)

    @post(
        "/bulk",
        sync_to_thread=True,
        status_code=200,
        request_max_body_size=BULK_MAX_BODY,
        summary="Create up to 10,000 leads",
    )
    def create_bulk(
        self, data: JSONBody[BulkIn], request: AuthRequest, runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        """Valid items are stored even when others fail; `ids` has one entry per item."""
        items = [_item_for(request.user, raw) for raw in data.leads]
        with runtime.pool.connection() as conn, conn.transaction():
            result = leads.create_many(conn, items)
        return {
            "created": result.created,
            "duplicates": result.duplicates,
            "ids": result.ids,
            "errors": [
                {
                    "index": e.index,
                    "detail": e.detail,
                    "errors": [{"field": f.field, "message": f.message} for f in e.errors],
                }
                for e in result.errors
            ],
        }

    @get("/{lead_id:int}", sync_to_thread=True, summary="Read a lead with its attempts")
    def read_lead(
        self, lead_id: FromPath[int], request: AuthRequest, runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        with runtime.pool.connection() as conn, conn.transaction():
            lead = leads.get(conn, read_scope(request.user), lead_id)
            if lead is None:
                raise NotFoundException(f"no lead {lead_id}")
            return leads.lead_json(lead, leads.attempts(conn, [lead_id])[lead_id])

    @get(sync_to_thread=True, summary="List leads, newest first")
    def list_leads(
        self,
        request: AuthRequest,
        runtime: NamedDependency[Runtime],
        status: FromQuery[str | None] = None,
        phone: FromQuery[str | None] = None,
        template: FromQuery[str | None] = None,
        reseller_id: Annotated[str | None, QueryParameter(description="admin only")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=leads.MAX_PAGE)] = leads.DEFAULT_PAGE,
        cursor: Annotated[str | None, QueryParameter(description="a page's next_cursor")] = None,
    ) -> dict[str, Any]:
        scope = read_scope(request.user, reseller_id)
        with runtime.pool.connection() as conn, conn.transaction():
            page = leads.list_leads(
                conn,
                scope,
                status=status,
                phone=phone,
                template=template,
                limit=limit,
                cursor=cursor,
            )
            by_lead = leads.attempts(conn, [r["id"] for r in page.items])
        return {
            "items": [leads.lead_json(r, by_lead[r["id"]]) for r in page.items],
            "next_cursor": page.next_cursor,
        }

    @delete("/{lead_id:int}", sync_to_thread=True, status_code=200, summary="Cancel a lead")
    def cancel_lead(
        self, lead_id: FromPath[int], request: AuthRequest, runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        """200 with the lead, now CANCELLED; 409 when it is final or in a call."""
        with runtime.pool.connection() as conn, conn.transaction():
            result = leads.cancel(conn, read_scope(request.user), lead_id)
            if result is None:
                raise NotFoundException(f"no lead {lead_id}")
            if result.refused is not None:
                raise Conflict(result.refused)
            return leads.lead_json(result.lead, leads.attempts(conn, [lead_id])[lead_id])
