"""Signed JWTs with Switchboard's flat claims (role, reseller_id, merchant_id)."""

from __future__ import annotations

import time

import jwt

ROLES = ("admin", "reseller", "merchant", "alert_system")


def issue_token(
    secret: str,
    role: str,
    reseller_id: str | None = None,
    merchant_id: str | None = None,
    ttl_s: int = 3600,
    sub: str | None = None,
) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if role != "admin" and not reseller_id:
        raise ValueError(f"role {role!r} needs a reseller id")
    if role == "merchant" and not merchant_id:
        raise ValueError("role 'merchant' needs a merchant id")
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": sub or f"{role}:{reseller_id or '*'}:{merchant_id or '*'}",
        "iat": now,
        "exp": now + ttl_s,
        "role": role,
    }
    if reseller_id:
        claims["reseller_id"] = reseller_id
    if merchant_id:
        claims["merchant_id"] = merchant_id
    return jwt.encode(claims, secret, algorithm="HS256")
