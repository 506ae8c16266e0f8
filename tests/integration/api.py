"""What the API tests share: tokens for each role and problem-details assertions."""

from __future__ import annotations

from typing import Any

from dispatcher.settings import Settings
from dispatcher.tokens import issue_token


def auth(role: str, reseller: str | None = None, merchant: str | None = None) -> dict[str, str]:
    token = issue_token(Settings().jwt_secret, role, reseller, merchant)
    return {"Authorization": f"Bearer {token}"}


def problem(response: Any, status: int) -> dict[str, Any]:
    """The RFC 9457 body of a response that must have failed with `status`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and "detail" in body
    return body


def fields(body: dict[str, Any]) -> list[str]:
    return [e["field"] for e in body["errors"]]
