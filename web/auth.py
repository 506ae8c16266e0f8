"""Who is calling and what they may touch.

Litestar's JWTAuth verifies the bearer token (HS256, issued by
`dispatcher.tokens.issue_token`, re-exported here); the claims are flat: `sub`, `exp`,
`iat`, `role`, `reseller_id`, `merchant_id`. Role guards answer 403; tenancy is applied
in the queries (a lead of another tenant is a 404, so ids do not leak across tenants).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import PermissionDeniedException
from litestar.handlers import BaseRouteHandler
from litestar.security.jwt import JWTAuth, Token
from litestar.types import Guard

from dispatcher.leads import Scope
from dispatcher.settings import Settings
from dispatcher.tokens import ROLES, issue_token

__all__ = [
    "ROLES",
    "Principal",
    "issue_token",
    "jwt_auth",
    "own_item",
    "principal_from_claims",
    "read_scope",
    "require_roles",
    "retrieve_principal",
]

ALGORITHM = "HS256"  # what dispatcher.tokens.issue_token signs with
# Paths served without a token: probes, docs, metrics, and provider callbacks (signed).
PUBLIC_PATHS = ["^/health$", "^/schema", "^/metrics$", "^/v1/webhooks/"]


@dataclass(frozen=True)
class Principal:
    sub: str
    role: str
    reseller_id: str | None
    merchant_id: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def principal_from_claims(sub: str, claims: Mapping[str, Any]) -> Principal | None:
    """The caller, or None when the claims do not describe a valid one (→ 401)."""
    role, reseller, merchant = (claims.get(k) for k in ("role", "reseller_id", "merchant_id"))
    if role not in ROLES:
        return None
    if reseller is not None and (not isinstance(reseller, str) or not reseller):
        return None
    if merchant is not None and (not isinstance(merchant, str) or not merchant):
        return None
    if role != "admin" and reseller is None:
        return None
    if role == "merchant" and merchant is None:
        return None
    return Principal(sub, role, reseller, merchant if role == "merchant" else None)


def retrieve_principal(token: Token, connection: ASGIConnection[Any, Any, Any, Any]) -> Any:
    return principal_from_claims(token.sub, token.extras)


def jwt_auth(settings: Settings) -> JWTAuth[Principal, Token]:
    return JWTAuth[Principal, Token](
        retrieve_user_handler=retrieve_principal,
        token_secret=settings.jwt_secret,
        algorithm=ALGORITHM,
        exclude=PUBLIC_PATHS,
        description="JWT (HS256) with flat claims: role, reseller_id, merchant_id",
    )


def require_roles(*roles: str) -> Guard:
    """A guard letting only `roles` through (403 otherwise)."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if connection.user.role not in roles:
            raise PermissionDeniedException(f"role {connection.user.role!r} may not do this")

    return guard


def read_scope(principal: Principal, reseller_id: str | None = None) -> Scope:
    """The leads `principal` may read; an admin may narrow to one reseller."""
    if principal.is_admin:
        return Scope(reseller_id or None)
    if reseller_id and reseller_id != principal.reseller_id:
        raise PermissionDeniedException("reseller_id is not yours")
    return Scope(principal.reseller_id, principal.merchant_id)


def own_item(principal: Principal, item: Mapping[str, Any]) -> dict[str, Any]:
    """The item with reseller_id (and a merchant's merchant_id) taken from the token.

    Raises PermissionDeniedException when it names another tenant; an admin's item is
    returned as is (it must name the reseller: the service answers 422 if not)."""
    out = dict(item)
    if principal.is_admin:
        return out
    owned = (("reseller_id", principal.reseller_id), ("merchant_id", principal.merchant_id))
    for name, own in owned:
        given = out.get(name)
        if isinstance(given, str) and not given.strip():
            given = None
        if own is None:
            continue
        if given is not None and given != own:
            raise PermissionDeniedException(f"{name} {given!r} is not yours", extra={"field": name})
        out[name] = own
    return out
