"""The simulator's HTTP service: the provider API the adapter calls, the `/sim/*` control
and scoring endpoints tests use, and signed delivery of status callbacks.

Run by `switchboard simulator` (uvicorn on settings.sim_host:sim_port).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from litestar import Litestar, Request, Response, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

from dispatcher.settings import Settings
from dispatcher.simulator.engine import (
    IdempotencyConflict,
    InvalidInput,
    SimConfig,
    Simulator,
    parse_place_request,
)
from dispatcher.telephony.signing import SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

Sim = NamedDependency[Simulator]  # injected by name; see `create_app`

RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))


CALLBACK_CONNECTIONS = 32  # callbacks in flight at once; the others queue (see `running`)


class CallbackSender:
    """Posts signed status callbacks, retrying briefly on transport errors, 429 and 5xx.

    A 4xx other than 429 is final: the receiver looked at the callback and refused it
    (a bad signature, an unknown provider), and sending it again would change nothing.
    """

    def __init__(
        self,
        secret: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        attempts: int = 4,
        backoff_s: float = 0.05,
        timeout_s: float = 5.0,
    ) -> None:
        self._secret = secret
        self._transport = transport
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        self._slots = asyncio.Semaphore(CALLBACK_CONNECTIONS)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Own an AsyncClient for the app's lifetime (one pool for all callbacks).

        At most CALLBACK_CONNECTIONS callbacks are in flight; the rest wait on a semaphore.
        httpcore's pool rescans every connection against every queued request each time a
        request starts or ends (quadratic): with hundreds of calls in flight that scan took
        most of the simulator's CPU and delayed callbacks by seconds (and past the pool
        timeout), so callbacks queue here, in O(1), and the pool never holds a waiter."""
        limits = httpx.Limits(
            max_connections=CALLBACK_CONNECTIONS, max_keepalive_connections=CALLBACK_CONNECTIONS
        )
        async with httpx.AsyncClient(
            timeout=self._timeout_s, limits=limits, transport=self._transport
        ) as c:
            self._client = c
            try:
                yield
            finally:
                self._client = None

    async def deliver(self, url: str, event: dict[str, Any]) -> bool:
        """POST `event` to `url`; whether the receiver accepted it (2xx)."""
        if self._client is None:
            raise RuntimeError("CallbackSender used outside `running()`")
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, self._secret)}
        reason = ""
        for attempt in range(1, self._attempts + 1):
            try:
                async with self._slots:
                    response = await self._client.post(url, content=body, headers=headers)
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    return True
                reason = f"HTTP {response.status_code}"
                if response.status_code not in RETRY_STATUSES:
                    break
            if attempt < self._attempts:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
        log.warning(
            "callback %s (%s) for attempt %s to %s failed: %s",
            event.get("event_id"),
            event.get("status"),
            event.get("attempt_id"),
            url,
            reason,
        )
        return False


async def _json_body(request: Request[Any, Any, Any], *, optional: bool = False) -> Any:
    raw = await request.body()
    if optional and not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise InvalidInput("body", "not valid JSON") from None


@post("/calls", status_code=201)
async def place_call(request: Request[Any, Any, Any], sim: Sim) -> Response[Any]:
    """Place a call; a repeated attempt id returns the same call with 200."""
    call, created = sim.place(parse_place_request(await _json_body(request)))
    if created:
        sim.start(call)
    return Response(
        {"call_id": call.call_id, "status": call.status}, status_code=201 if created else 200
    )


@get("/calls/{attempt_id:str}")
async def get_call(attempt_id: FromPath[str], sim: Sim) -> dict[str, Any]:
    call = sim.lookup(attempt_id)
    if call is None:
        raise NotFoundException(f"no call for attempt {attempt_id}")
    return call.lookup_json()


@get("/sim/calls")
async def list_calls(sim: Sim) -> list[dict[str, Any]]:
    return [c.ledger_json() for c in sim.calls()]


@get("/sim/stats")
async def get_stats(sim: Sim) -> dict[str, Any]:
    return sim.stats()


@put("/sim/script")
async def put_script(request: Request[Any, Any, Any], sim: Sim) -> dict[str, Any]:
    """Replace the listed numbers' scripts; returns every script still pending."""
    return sim.set_script(await _json_body(request))


@get("/sim/script")
async def get_script(sim: Sim) -> dict[str, Any]:
    return sim.scripts()


@put("/sim/config")
async def put_config(request: Request[Any, Any, Any], sim: Sim) -> dict[str, Any]:
    """Partial update; returns the whole config now in force."""
    return sim.configure(await _json_body(request)).to_json()


@get("/sim/config")
async def get_config(sim: Sim) -> dict[str, Any]:
    return sim.config.to_json()


@post("/sim/reset", status_code=200)
async def reset(request: Request[Any, Any, Any], sim: Sim) -> dict[str, Any]:
    """Clear calls, stats and scripts, cancelling calls still playing out.

    The config is kept, so a test can configure once and reset between cases; send
    `{"reset_config": true}` to restore the defaults as well.
    """
    body = await _json_body(request, optional=True)
    if not isinstance(body, dict) or set(body) - {"reset_config"}:
        raise InvalidInput("body", 'expected {} or {"reset_config": true|false}')
    flag = body.get("reset_config", False)
    if not isinstance(flag, bool):
        raise InvalidInput("reset_config", "expected a boolean")
    await sim.reset(reset_config=flag)
    return {"reset": True, "config": sim.config.to_json()}


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def _problem(status: int, title: str, detail: str, **extra: Any) -> Response[Any]:
    return Response(
        {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra},
        status_code=status,
        media_type="application/problem+json",
    )


def _invalid(_: Request[Any, Any, Any], exc: InvalidInput) -> Response[Any]:
    return _problem(
        422,
        "Invalid request",
        str(exc),
        errors=[{"field": exc.field, "message": exc.message}],
    )


def _conflict(_: Request[Any, Any, Any], exc: IdempotencyConflict) -> Response[Any]:
    return _problem(409, "Idempotency key reused", str(exc))


def create_app(
    settings: Settings,
    *,
    config: SimConfig | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Litestar:
    """The simulator app. `config` replaces the default simulation config; `transport`
    routes callbacks somewhere other than the network (tests). The engine is at
    `app.state.simulator`."""
    sender = CallbackSender(settings.webhook_secret, transport=transport)
    sim = Simulator(sender.deliver, config)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        async with sender.running():
            try:
                yield
            finally:
                await sim.aclose()

    def provide_sim() -> Simulator:
        return sim

    return Litestar(
        route_handlers=[
            place_call,
            get_call,
            list_calls,
            get_stats,
            put_script,
            get_script,
            put_config,
            get_config,
            reset,
            health,
        ],
        dependencies={"sim": Provide(provide_sim, sync_to_thread=False)},
        exception_handlers={InvalidInput: _invalid, IdempotencyConflict: _conflict},
        lifespan=[lifespan],
        # The process (the CLI) owns logging; Litestar's default would replace its handlers.
        logging_config=None,
        state=State({"simulator": sim}),
    )
