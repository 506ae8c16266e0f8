"""Voice alert routes: fire, read, list, resolve. Firing is for admins and alert systems
only (a reseller's people manage groups, its monitoring fires); an alert system's token
carries its reseller and fires only into that reseller's groups, so another reseller's
group is a 404. Reading and resolving are open to admins, resellers and alert systems,
each within its reseller (another reseller's alert is a 404)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.security.jwt import Token
from msgspec import Meta, Struct

from dispatcher import alert_groups, alerts, leads
from dispatcher.runtime import Runtime
from web.alert_groups import reseller_of
from web.auth import Principal, require_roles
from web.schemas import to_item

AuthRequest = Request[Principal, Token, Any]

FIRERS = ("admin", "alert_system")
READERS = ("admin", "reseller", "alert_system")


class AlertFireIn(Struct, forbid_unknown_fields=True, kw_only=True):
    """An alert to fire. Blank ids, names and message are refused (422)."""

    alert_id: Annotated[str, Meta(description="the source's alert id; the dedup key")]
    alert_group_name: Annotated[str, Meta(description="a group of the caller's reseller")]
    alert_message: Annotated[str, Meta(description="spoken to whoever answers")]
    template: Annotated[str, Meta(description='default "alert"; must exist')] | None = None
    merchant_id: str | None = None
    dedup_ttl_seconds: (
        Annotated[int, Meta(description="default 300; 0: no dedup window, Redis untouched")] | None
    ) = None
    mode: Annotated[str, Meta(description="parallel (default) or sequential")] | None = None
    rounds: (
        Annotated[int, Meta(description="sequential: times the whole group is tried, 1-10")] | None
    ) = None
    extra_payload: (
        Annotated[dict[str, Any], Meta(description="passed to the voice agent")] | None
    ) = None
    reseller_id: Annotated[str, Meta(description="admin: required; others: theirs")] | None = None


class AlertController(Controller):
    path = "/v1/alerts"
    tags = ["alerts"]
    guards = [require_roles(*READERS)]

    @post(
        "/fire",
        sync_to_thread=True,
        status_code=202,
        guards=[require_roles(*FIRERS)],
        summary="Fire an alert: call the on-call group",
    )
    def fire(
        self, data: JSONBody[AlertFireIn], request: AuthRequest, runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        """202 with `status` queued (an alert was opened and its calls queued),
        deduplicated (inside the dedup window, or to the open alert with this id),
        no_members (the group is empty) or failed (every call was capped); `failed`
        lists the members not called and why."""
        item = to_item(data)
        reseller = reseller_of(request.user, item.pop("reseller_id", None))
        req = alerts.parse_fire(item, reseller, request.user.sub)
        try:
            result = alerts.fire(runtime, req)
        except alert_groups.GroupNotFound:
            raise NotFoundException(f"alert group {req.group_name!r} not found") from None
        return result.as_json()

    @get(sync_to_thread=True, summary="List alerts, newest first")
    def list_alerts(
        self,
        request: AuthRequest,
        runtime: NamedDependency[Runtime],
        status: Annotated[
            str | None, QueryParameter(description=", ".join(alerts.ALERT_STATUSES))
        ] = None,
        reseller_id: Annotated[
            str | None, QueryParameter(description="admin: one reseller's alerts")
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=leads.MAX_PAGE)] = leads.DEFAULT_PAGE,
        cursor: Annotated[str | None, QueryParameter(description="a page's next_cursor")] = None,
    ) -> dict[str, Any]:
        user = request.user
        scope = (reseller_id or None) if user.is_admin else reseller_of(user, reseller_id)
        with runtime.pool.connection() as conn, conn.transaction():
            page = alerts.list_alerts(conn, scope, status=status, limit=limit, cursor=cursor)
        return {
            "items": [alerts.alert_json(r) for r in page.items],
            "next_cursor": page.next_cursor,
        }

    @get("/{alert_ref:int}", sync_to_thread=True, summary="An alert with its timeline")
    def get_alert(
        self, alert_ref: FromPath[int], request: AuthRequest, runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        scope = _scope(request.user)
        with runtime.pool.connection() as conn, conn.transaction():
            alert = alerts.get(conn, scope, alert_ref)
            if alert is None:
                raise NotFoundException(f"alert {alert_ref} not found")
            return alerts.alert_json(alert, alerts.timeline(conn, alert_ref))

    @post(
        "/{alert_ref:int}/resolve",
        sync_to_thread=True,
        status_code=200,
        summary="Resolve an alert: stop calling",
    )
    def resolve_alert(
        self, alert_ref: FromPath[int], request: AuthRequest, runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        """200 with the alert, now resolved; its calls not yet started are cancelled.
        409 when it already was resolved."""
        scope = _scope(request.user)
        with runtime.pool.connection() as conn, conn.transaction():
            alert = alerts.resolve(conn, scope, alert_ref, request.user.sub)
            if alert is None:
                raise NotFoundException(f"alert {alert_ref} not found")
            return alerts.alert_json(alert, alerts.timeline(conn, alert_ref))


def _scope(user: Principal) -> str | None:
    """The reseller whose alerts `user` may touch by id; None: any (an admin)."""
    return None if user.is_admin else user.reseller_id
