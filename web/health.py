"""`GET /health`: can this process reach PostgreSQL and Redis right now? Fast and
bounded: one SELECT 1 and one PING, each with a short timeout, for load balancers and
orchestrators."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from litestar import Litestar, Request, Response, get
from litestar.di import NamedDependency
from redis.backoff import NoBackoff
from redis.retry import Retry

from dispatcher.runtime import Runtime

TIMEOUT_S = 2.0


def _postgres(runtime: Runtime) -> None:
    with runtime.pool.connection(timeout=TIMEOUT_S) as conn:
        conn.execute("SELECT 1")


def open_probe(app: Litestar) -> None:
    """Startup hook: a client on the runtime's Redis URL with short timeouts and no
    retries (the shared client has neither, and a probe must answer fast)."""
    app.state.health_redis = redis.Redis.from_url(
        app.state.runtime.settings.redis_url or "",
        socket_timeout=TIMEOUT_S,
        socket_connect_timeout=TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )


def close_probe(app: Litestar) -> None:
    """Shutdown hook: close the probe's Redis client."""
    app.state.health_redis.close()


def _check(probe: Callable[[], Any]) -> str:
    try:
        probe()
    except Exception as exc:
        return f"fail: {type(exc).__name__}: {exc}"[:300]
    return "ok"


@get("/health", sync_to_thread=True, tags=["operations"], summary="Liveness")
def health(
    request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
) -> Response[dict[str, Any]]:
    """200 when every check passes, else 503 with each check's result."""
    checks = {
        "postgres": _check(lambda: _postgres(runtime)),
        "redis": _check(lambda: request.app.state.health_redis.ping()),
    }
    ok = all(v == "ok" for v in checks.values())
    return Response(
        {"status": "ok" if ok else "fail", "checks": checks}, status_code=200 if ok else 503
    )
