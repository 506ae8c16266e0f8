"""The adapter for Switchboard's built-in telephony simulator (`dispatcher.simulator`).

It speaks the simulator's HTTP API with one shared, thread-safe `httpx.Client`, because
Dramatiq runs several worker threads per process and each would otherwise open its own
connection pool.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

import httpx

from dispatcher.telephony.base import (
    FINAL_STATUSES,
    PROGRESS_RANK,
    BadSignature,
    CallEvent,
    CallRequest,
    CallStateUnknown,
    ProviderError,
)
from dispatcher.telephony.signing import SIGNATURE_HEADER, verify

KNOWN_STATUSES = frozenset(PROGRESS_RANK) | FINAL_STATUSES


class SimulatorProvider:
    """Places calls on the simulator, looks them up, and reads its signed callbacks."""

    name = "simulator"

    def __init__(self, base_url: str, webhook_secret: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._secret = webhook_secret
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def place_call(self, request: CallRequest) -> str:
        """POST /calls; the attempt id is the idempotency key, so retrying after a timeout
        (when the call may already exist) returns the same call instead of dialing twice."""
        body = {
            "lead_id": request.lead_id,
            "attempt_id": str(request.attempt_id),
            "to": request.to,
            "from": request.from_,
            "max_channels": request.max_channels,
            "cps": request.cps,
            "webhook_url": request.webhook_url,
            "payload": request.payload,
        }
        response = self._request("POST", "/calls", body=body, attempt_id=request.attempt_id)
        if response.status_code not in (200, 201):
            raise ProviderError(_describe(response, "place call", request.attempt_id))
        try:
            call_id = response.json()["call_id"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(
                f"simulator: place call for attempt {request.attempt_id}: "
                f"unreadable response {response.text[:200]!r}"
            ) from exc
        if not isinstance(call_id, str) or not call_id:
            raise ProviderError(f"simulator: place call: bad call_id {call_id!r}")
        return call_id

    def fetch_call(self, attempt_id: uuid.UUID, call_id: str | None) -> CallEvent | None:
        """GET /calls/{attempt_id}; None when the simulator never placed that attempt.

        The event id is derived from the call and its status, so applying the same answer
        twice (a reconciler run repeated) is deduplicated like a repeated callback.
        """
        response = self._request("GET", f"/calls/{attempt_id}", attempt_id=attempt_id)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ProviderError(_describe(response, "fetch call", attempt_id))
        try:
            data = response.json()
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            status = data.get("status")
            data.setdefault("event_id", f"{data.get('call_id')}:{status}:fetch")
            return event_from_json(data)
        except ValueError as exc:
            raise ProviderError(f"simulator: fetch call {attempt_id}: {exc}") from exc

    def parse_callback(self, body: bytes, headers: Mapping[str, str], url: str) -> CallEvent:
        """Verify the signature on the raw body, then parse it.

        Raises BadSignature when the header is missing or wrong, ValueError when the
        body is not a well-formed status callback.
        """
        if not verify(body, self._secret, _header(headers, SIGNATURE_HEADER)):
            raise BadSignature(f"missing or invalid {SIGNATURE_HEADER}")
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("callback body is not a JSON object")
        return event_from_json(data)

    def close(self) -> None:
        self._client.close()

    def _request(
        self, method: str, path: str, *, attempt_id: uuid.UUID, body: Any = None
    ) -> httpx.Response:
        try:
            return self._client.request(method, path, json=body)
        except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError) as exc:
            # Sent, but no answer: the simulator may have placed the call.
            error = CallStateUnknown if method == "POST" else ProviderError
            raise error(
                f"simulator at {self.base_url}: {method} {path} for attempt {attempt_id}: "
                f"no answer after sending: {type(exc).__name__}"
            ) from exc
        except httpx.HTTPError as exc:
            raise ProviderError(
                f"simulator at {self.base_url}: {method} {path} for attempt {attempt_id} "
                f"failed: {type(exc).__name__}: {exc}"
            ) from exc


def event_from_json(data: Mapping[str, Any]) -> CallEvent:
    """A `CallEvent` from the simulator's JSON; ValueError names the first bad field."""
    event_id = _require_str(data, "event_id")
    call_id = _require_str(data, "call_id")
    status = _require_str(data, "status")
    if status not in KNOWN_STATUSES:
        raise ValueError(f"status: unknown call status {status!r}")
    raw_attempt = data.get("attempt_id")
    try:
        attempt_id = None if raw_attempt is None else uuid.UUID(str(raw_attempt))
    except ValueError as exc:
        raise ValueError(f"attempt_id: not a UUID: {raw_attempt!r}") from exc
    return CallEvent(
        event_id=event_id,
        call_id=call_id,
        attempt_id=attempt_id,
        status=status,
        duration_s=_optional_number(data, "duration_s"),
        answered_by=_optional_str(data, "answered_by"),
        digits=_optional_str(data, "digits"),
        timestamp=_optional_number(data, "timestamp"),
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup, since callers may hand us a plain dict of headers."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def _require_str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key}: required non-empty string, got {value!r}")
    return value


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value or None
    raise ValueError(f"{key}: expected a string or null, got {value!r}")


def _optional_number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: expected a number or null, got {value!r}")
    return float(value)


def _describe(response: httpx.Response, what: str, attempt_id: uuid.UUID) -> str:
    return (
        f"simulator: {what} for attempt {attempt_id}: HTTP {response.status_code} "
        f"{response.text[:200]!r}"
    )
