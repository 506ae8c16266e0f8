"""Provider status callbacks. No JWT here: each provider signs its callbacks, and the
provider's adapter verifies the signature over the raw body before anything is read."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Request, post
from litestar.di import NamedDependency
from litestar.exceptions import ClientException, NotFoundException, PermissionDeniedException
from litestar.params import FromPath, RawBody

from dispatcher import metrics
from dispatcher.callbacks import apply_event
from dispatcher.runtime import Runtime
from dispatcher.telephony.base import BadSignature

log = structlog.get_logger(__name__)


def _signed_url(request: Request[Any, Any, Any], runtime: Runtime) -> str:
    """The URL the provider posted to, as it signed it: behind a proxy that is the public
    URL we gave it, not the one this process sees."""
    if runtime.settings.public_url is None:
        return str(request.url)
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{runtime.settings.public_url.rstrip('/')}{request.url.path}{query}"


@post(
    "/v1/webhooks/{provider:str}",
    sync_to_thread=True,
    status_code=200,
    tags=["webhooks"],
    summary="A provider's status callback",
)
def receive_callback(
    provider: FromPath[str],
    body: RawBody,
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
) -> dict[str, bool]:
    """200 `{"applied": true}`, or false for an event already applied (a provider retry)."""
    try:
        adapter = runtime.provider(provider)
    except LookupError:
        raise NotFoundException(f"no provider {provider!r}") from None
    try:
        event = adapter.parse_callback(body, request.headers, _signed_url(request, runtime))
    except BadSignature:
        log.warning("webhook_bad_signature", provider=provider)
        metrics.WEBHOOK_EVENTS.labels(provider=provider, result="bad_signature").inc()
        raise PermissionDeniedException("bad signature") from None
    except ValueError as exc:
        metrics.WEBHOOK_EVENTS.labels(provider=provider, result="malformed").inc()
        raise ClientException(f"malformed callback: {exc}") from None
    applied = apply_event(runtime, provider, event)
    # `provider` is a configured adapter's name here (unknown ones were a 404): bounded.
    metrics.WEBHOOK_EVENTS.labels(
        provider=provider, result="applied" if applied else "duplicate"
    ).inc()
    return {"applied": applied}
