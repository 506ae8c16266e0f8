"""The telephony simulation: what each call does, when, and the score it keeps.

Everything here runs on one asyncio event loop and needs no locks: `Simulator.place` is
synchronous, so deciding a call and updating the books happen atomically between awaits.
Delivery of status callbacks is injected (`Deliver`), so the engine is tested without HTTP.

Randomness is drawn from a per-call RNG seeded with `(config.seed, attempt_id)`: an
attempt gets the same outcome, timings and injected faults whatever order concurrent
workers' requests arrive in, which a single shared RNG could not promise.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from dispatcher.logs import mask_phone

log = logging.getLogger(__name__)

OUTCOMES = (
    "answered",
    "completed",
    "voicemail",
    "no_answer",
    "busy",
    "failed",
    "rejected",
    "invalid",
)
ANSWERED_OUTCOMES = frozenset({"answered", "completed", "voicemail"})
# outcome → (final Twilio status, answered_by)
FINAL_STATUS: dict[str, tuple[str, str | None]] = {
    "answered": ("completed", "human"),
    "completed": ("completed", "human"),
    "voicemail": ("completed", "machine_start"),
    "no_answer": ("no-answer", None),
    "busy": ("busy", None),
    "failed": ("failed", None),
    "rejected": ("rejected", None),
    "invalid": ("invalid", None),
}
DEFAULT_DISTRIBUTION: dict[str, float] = {
    "answered": 0.60,
    "no_answer": 0.15,
    "busy": 0.08,
    "voicemail": 0.10,
    "failed": 0.05,
    "rejected": 0.01,
    "invalid": 0.01,
}
MAX_MS = 3_600_000.0  # one hour: longer timings are a typo, not a scenario
CPS_WINDOW_S = 1.0

# (webhook_url, event) → whether the receiver accepted it.
Deliver = Callable[[str, dict[str, Any]], Awaitable[bool]]


class InvalidInput(ValueError):
    """A request field the simulator cannot accept; `field` names it for the 422."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class IdempotencyConflict(Exception):
    """An attempt id already used for a different lead: the key was reused, not retried."""


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class CallbackFaults:
    """Per-call probabilities of delivery faults Switchboard must survive."""

    duplicate: float = 0.0  # each event: sent twice with the same event_id
    reorder: float = 0.0  # per call: `ringing` delivered after the final status
    drop: float = 0.0  # per call: the final callback is never sent


@dataclass(frozen=True)
class SimConfig:
    distribution: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_DISTRIBUTION))
    ring_ms: tuple[float, float] = (50.0, 200.0)
    talk_ms: tuple[float, float] = (100.0, 500.0)
    seed: int | None = 0  # None: a fresh random seed per call, not reproducible
    callbacks: CallbackFaults = field(default_factory=CallbackFaults)
    # Progress callbacks (initiated, ringing, in-progress) besides the final one: Twilio
    # sends only the events a call's StatusCallbackEvent subscribes to.
    progress: bool = True

    def updated(self, changes: Any) -> SimConfig:
        """A copy with `changes` applied. Keys may be omitted; `distribution` replaces the
        whole distribution, `callbacks` updates only the probabilities it names."""
        if not isinstance(changes, Mapping):
            raise InvalidInput("body", "expected a JSON object")
        unknown = set(changes) - {
            "distribution",
            "ring_ms",
            "talk_ms",
            "seed",
            "callbacks",
            "progress",
        }
        if unknown:
            raise InvalidInput(sorted(unknown)[0], "unknown field")
        new = self
        if "distribution" in changes:
            new = replace(new, distribution=_distribution(changes["distribution"]))
        for key in ("ring_ms", "talk_ms"):
            if key in changes:
                new = replace(new, **{key: _ms_range(key, changes[key])})
        if "seed" in changes:
            seed = changes["seed"]
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise InvalidInput("seed", "expected an integer or null")
            new = replace(new, seed=seed)
        if "callbacks" in changes:
            new = replace(new, callbacks=_faults(new.callbacks, changes["callbacks"]))
        if "progress" in changes:
            if not isinstance(changes["progress"], bool):
                raise InvalidInput("progress", "expected true or false")
            new = replace(new, progress=changes["progress"])
        return new

    def to_json(self) -> dict[str, Any]:
        return {
            "distribution": dict(self.distribution),
            "ring_ms": list(self.ring_ms),
            "talk_ms": list(self.talk_ms),
            "seed": self.seed,
            "callbacks": {
                "duplicate": self.callbacks.duplicate,
                "reorder": self.callbacks.reorder,
                "drop": self.callbacks.drop,
            },
            "progress": self.progress,
        }


def _number(field_name: str, value: Any, *, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(field_name, "expected a number")
    if not low <= value <= high:
        raise InvalidInput(field_name, f"must be between {low:g} and {high:g}")
    return float(value)


def _distribution(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping) or not value:
        raise InvalidInput("distribution", "expected a non-empty object of outcome weights")
    weights: dict[str, float] = {}
    for outcome, weight in value.items():
        if outcome not in OUTCOMES:
            raise InvalidInput(f"distribution.{outcome}", f"unknown outcome; one of {OUTCOMES}")
        weights[outcome] = _number(f"distribution.{outcome}", weight, low=0.0, high=1e9)
    if sum(weights.values()) <= 0:
        raise InvalidInput("distribution", "weights must not all be zero")
    return weights


def _ms_range(field_name: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise InvalidInput(field_name, "expected [min, max] in milliseconds")
    low = _number(field_name, value[0], low=0.0, high=MAX_MS)
    high = _number(field_name, value[1], low=0.0, high=MAX_MS)
    if low > high:
        raise InvalidInput(field_name, "min must not exceed max")
    return low, high


def _faults(current: CallbackFaults, value: Any) -> CallbackFaults:
    if not isinstance(value, Mapping):
        raise InvalidInput("callbacks", "expected an object of probabilities")
    changes: dict[str, float] = {}
    for key, p in value.items():
        if key not in ("duplicate", "reorder", "drop"):
            raise InvalidInput(f"callbacks.{key}", "unknown fault; one of duplicate, reorder, drop")
        changes[key] = _number(f"callbacks.{key}", p, low=0.0, high=1.0)
    return replace(current, **changes)


# ---------------------------------------------------------------- requests and scripts


@dataclass(frozen=True)
class ScriptEntry:
    """One scripted call: its outcome and, optionally, key press and timings."""

    outcome: str
    digits: str | None = None
    talk_ms: float | None = None
    ring_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def parse_script(body: Any) -> dict[str, list[ScriptEntry]]:
    """`{"+1415...": ["busy", {"outcome": "answered", "digits": "1"}], ...}`."""
    if not isinstance(body, Mapping):
        raise InvalidInput("body", "expected an object of number → list of outcomes")
    script: dict[str, list[ScriptEntry]] = {}
    for number, entries in body.items():
        if not number.strip():
            raise InvalidInput("body", "phone number keys must not be blank")
        if not isinstance(entries, list):
            raise InvalidInput(number, "expected a list of outcomes")
        script[number] = [_script_entry(f"{number}[{i}]", e) for i, e in enumerate(entries)]
    return script


def _script_entry(where: str, entry: Any) -> ScriptEntry:
    if isinstance(entry, str):
        entry = {"outcome": entry}
    if not isinstance(entry, Mapping):
        raise InvalidInput(where, "expected an outcome or an object with one")
    unknown = set(entry) - {"outcome", "digits", "talk_ms", "ring_ms"}
    if unknown:
        raise InvalidInput(f"{where}.{sorted(unknown)[0]}", "unknown field")
    outcome = entry.get("outcome")
    if outcome not in OUTCOMES:
        raise InvalidInput(f"{where}.outcome", f"expected one of {OUTCOMES}")
    digits = entry.get("digits")
    if digits is not None and not isinstance(digits, str):
        raise InvalidInput(f"{where}.digits", "expected a string")
    timings = {
        key: _number(f"{where}.{key}", entry[key], low=0.0, high=MAX_MS)
        for key in ("talk_ms", "ring_ms")
        if entry.get(key) is not None
    }
    return ScriptEntry(outcome=outcome, digits=digits or None, **timings)


@dataclass(frozen=True)
class PlaceRequest:
    lead_id: int
    attempt_id: str  # canonical UUID text
    to: str
    from_: str
    max_channels: int
    cps: float | None
    webhook_url: str
    payload: Mapping[str, Any]


def parse_place_request(body: Any) -> PlaceRequest:
    """Validate a `POST /calls` body; InvalidInput names the first bad field."""
    if not isinstance(body, Mapping):
        raise InvalidInput("body", "expected a JSON object")
    lead_id = body.get("lead_id")
    if isinstance(lead_id, bool) or not isinstance(lead_id, int):
        raise InvalidInput("lead_id", "expected an integer")
    try:
        attempt_id = str(uuid.UUID(str(body.get("attempt_id"))))
    except ValueError:
        raise InvalidInput("attempt_id", "expected a UUID") from None
    to, from_ = body.get("to"), body.get("from")
    for name, value in (("to", to), ("from", from_)):
        if not isinstance(value, str) or not value.strip():
            raise InvalidInput(name, "expected a phone number")
    max_channels = body.get("max_channels")
    if isinstance(max_channels, bool) or not isinstance(max_channels, int) or max_channels < 1:
        raise InvalidInput("max_channels", "expected an integer ≥ 1")
    cps = body.get("cps")
    if cps is not None:
        cps = _number("cps", cps, low=0.0, high=1e6)
        if cps == 0:
            raise InvalidInput("cps", "must be positive or null")
    webhook_url = body.get("webhook_url")
    parts = urlsplit(webhook_url) if isinstance(webhook_url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput("webhook_url", "expected an http(s) URL")
    payload = body.get("payload") or {}
    if not isinstance(payload, Mapping):
        raise InvalidInput("payload", "expected an object")
    return PlaceRequest(
        lead_id=lead_id,
        attempt_id=attempt_id,
        to=to,
        from_=from_,
        max_channels=max_channels,
        cps=cps,
        webhook_url=webhook_url,
        payload=payload,
    )


# ---------------------------------------------------------------- calls


@dataclass
class SimCall:
    """One placed call: what was asked, what was decided, and where it is now."""

    call_id: str
    request: PlaceRequest
    outcome: str
    digits: str | None
    ring_ms: float
    talk_ms: float
    reorder: bool
    drop: bool
    duplicate_p: float
    rng: random.Random = field(repr=False)
    placed_at: float
    status: str = "queued"
    ended_at: float | None = None
    # The last callback queued for delivery: the next one waits for it, so callbacks
    # arrive in order while the call's own timeline never waits for the webhook.
    sending: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def answered(self) -> bool:
        return self.outcome in ANSWERED_OUTCOMES

    @property
    def final_status(self) -> str:
        return FINAL_STATUS[self.outcome][0]

    @property
    def answered_by(self) -> str | None:
        return FINAL_STATUS[self.outcome][1]

    @property
    def duration_s(self) -> float:
        return round(self.talk_ms / 1000, 3) if self.answered else 0.0

    def lookup_json(self) -> dict[str, Any]:
        """`GET /calls/{attempt_id}`: the truth, whatever callbacks were lost."""
        ended = self.ended_at is not None
        return {
            "call_id": self.call_id,
            "attempt_id": self.request.attempt_id,
            "lead_id": self.request.lead_id,
            "status": self.status,
            "duration_s": self.duration_s if ended else 0.0,
            "answered_by": self.answered_by if ended or self.status == "in-progress" else None,
            "digits": self.digits if ended else None,
        }

    def ledger_json(self) -> dict[str, Any]:
        """`GET /sim/calls`: the ground truth tests compare Switchboard against."""
        return {
            "call_id": self.call_id,
            "attempt_id": self.request.attempt_id,
            "lead_id": self.request.lead_id,
            "to": self.request.to,
            "from": self.request.from_,
            "outcome": self.outcome,
            "status": self.status,
            "placed_at": self.placed_at,
            "ended_at": self.ended_at,
        }


@dataclass
class _Books:
    """The score the simulator keeps; reset wholesale by `Simulator.reset`."""

    calls_total: int = 0
    by_outcome: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    in_flight_by_number: Counter[str] = field(default_factory=Counter)
    in_flight_by_lead: Counter[int] = field(default_factory=Counter)
    max_concurrent_by_number: dict[str, int] = field(default_factory=dict)
    channel_violations: int = 0
    cps_violations: int = 0
    duplicate_dials: int = 0
    idempotent_replays: int = 0
    recent_by_number: defaultdict[str, deque[float]] = field(
        default_factory=lambda: defaultdict(deque)
    )
    max_cps_by_number: dict[str, int] = field(default_factory=dict)
    callbacks_sent: int = 0
    callbacks_failed: int = 0
    duplicated: int = 0
    reordered: int = 0
    dropped: int = 0


class Simulator:
    """Places calls, plays them out on the event loop, and keeps score."""

    def __init__(
        self,
        deliver: Deliver,
        config: SimConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._deliver = deliver
        self.config = config or SimConfig()
        self._clock = clock
        self._monotonic = monotonic
        self._books = _Books()
        self._calls: dict[str, SimCall] = {}  # by attempt id, in placement order
        self._scripts: dict[str, deque[ScriptEntry]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- control

    def configure(self, changes: Any) -> SimConfig:
        """Apply a partial config update (validated as a whole before any of it applies)."""
        self.config = self.config.updated(changes)
        return self.config

    def set_script(self, body: Any) -> dict[str, list[dict[str, Any]]]:
        """Replace the scripts of the numbers in `body`; an empty list clears one."""
        for number, entries in parse_script(body).items():
            if entries:
                self._scripts[number] = deque(entries)
            else:
                self._scripts.pop(number, None)
        return self.scripts()

    def scripts(self) -> dict[str, list[dict[str, Any]]]:
        return {n: [e.to_json() for e in q] for n, q in self._scripts.items() if q}

    async def reset(self, *, reset_config: bool = False) -> None:
        """Forget all calls, stats and scripts; calls still playing out are cancelled and
        send no further callbacks. The config stays unless `reset_config`."""
        tasks = list(self._tasks)
        self._tasks.clear()
        self._books = _Books()
        self._calls.clear()
        self._scripts.clear()
        if reset_config:
            self.config = SimConfig()
        await _cancel(tasks)

    async def aclose(self) -> None:
        """Cancel every playout; used at shutdown."""
        tasks = list(self._tasks)
        self._tasks.clear()
        await _cancel(tasks)

    async def wait_idle(self) -> None:
        """Return once every call placed so far has played out (tests use this)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- reading

    def lookup(self, attempt_id: str) -> SimCall | None:
        try:
            key = str(uuid.UUID(attempt_id))
        except ValueError:
            return None
        return self._calls.get(key)

    def calls(self) -> list[SimCall]:
        return list(self._calls.values())

    def stats(self) -> dict[str, Any]:
        b = self._books
        return {
            "calls_total": b.calls_total,
            "by_outcome": dict(b.by_outcome),
            "in_flight": b.in_flight,
            "max_concurrent_by_number": dict(b.max_concurrent_by_number),
            "channel_violations": b.channel_violations,
            "duplicate_dials": b.duplicate_dials,
            "idempotent_replays": b.idempotent_replays,
            "max_calls_per_second_by_number": dict(b.max_cps_by_number),
            "cps_violations": b.cps_violations,
            "callbacks_sent": b.callbacks_sent,
            "callbacks_failed": b.callbacks_failed,
            "faults": {"duplicated": b.duplicated, "reordered": b.reordered, "dropped": b.dropped},
        }

    # -- placing

    def place(self, request: PlaceRequest) -> tuple[SimCall, bool]:
        """Decide and book a call; `(call, False)` for a replay of a known attempt id.

        Only books it: `start` plays it out. The checks run before the call is counted in
        flight, so a violation means the number was already full when this call came.
        """
        b = self._books
        existing = self._calls.get(request.attempt_id)
        if existing is not None:
            if existing.request.lead_id != request.lead_id:
                raise IdempotencyConflict(
                    f"attempt {request.attempt_id} was placed for lead "
                    f"{existing.request.lead_id}, not {request.lead_id}"
                )
            b.idempotent_replays += 1
            return existing, False

        number = request.from_
        if b.in_flight_by_lead[request.lead_id] > 0:
            b.duplicate_dials += 1
            log.warning("duplicate dial: lead %s already has a call in flight", request.lead_id)
        if b.in_flight_by_number[number] >= request.max_channels:
            b.channel_violations += 1
            log.warning(
                "channel violation on %s: %d in flight, max_channels %d",
                mask_phone(number),
                b.in_flight_by_number[number],
                request.max_channels,
            )
        self._count_rate(number, request.cps)

        call = self._decide(request)
        self._calls[request.attempt_id] = call
        b.calls_total += 1
        b.in_flight += 1
        b.in_flight_by_number[number] += 1
        b.in_flight_by_lead[request.lead_id] += 1
        b.max_concurrent_by_number[number] = max(
            b.max_concurrent_by_number.get(number, 0), b.in_flight_by_number[number]
        )
        log.debug(
            "placed %s attempt %s lead %s %s→%s outcome %s",
            call.call_id,
            request.attempt_id,
            request.lead_id,
            mask_phone(number),
            mask_phone(request.to),
            call.outcome,
        )
        return call, True

    def _count_rate(self, number: str, cps: float | None) -> None:
        """Track the most calls `number` placed within any sliding 1-second window."""
        b = self._books
        now = self._monotonic()
        window = b.recent_by_number[number]
        while window and window[0] <= now - CPS_WINDOW_S:
            window.popleft()
        window.append(now)
        b.max_cps_by_number[number] = max(b.max_cps_by_number.get(number, 0), len(window))
        if cps is not None and len(window) > cps * CPS_WINDOW_S:
            b.cps_violations += 1

    def _decide(self, request: PlaceRequest) -> SimCall:
        config = self.config
        seed = config.seed if config.seed is not None else random.getrandbits(64)
        rng = random.Random(f"{seed}:{request.attempt_id}")
        # Always draw the same values in the same order, so a script entry or a changed
        # distribution does not shift the faults an attempt gets.
        drawn_outcome = rng.choices(
            list(config.distribution), weights=list(config.distribution.values())
        )[0]
        ring_ms = rng.uniform(*config.ring_ms)
        talk_ms = rng.uniform(*config.talk_ms)
        reorder = rng.random() < config.callbacks.reorder
        drop = rng.random() < config.callbacks.drop

        script = self._scripts.get(request.to)
        entry = script.popleft() if script else ScriptEntry(outcome=drawn_outcome)
        if script is not None and not script:
            del self._scripts[request.to]
        return SimCall(
            call_id=f"CA{uuid.uuid4().hex}",
            request=request,
            outcome=entry.outcome,
            digits=entry.digits,
            ring_ms=entry.ring_ms if entry.ring_ms is not None else ring_ms,
            talk_ms=entry.talk_ms if entry.talk_ms is not None else talk_ms,
            reorder=reorder,
            drop=drop,
            duplicate_p=config.callbacks.duplicate,
            rng=rng,
            placed_at=self._clock(),
        )

    # -- playing out

    def start(self, call: SimCall) -> asyncio.Task[None]:
        """Play `call` out in the background on the running loop."""
        task = asyncio.get_running_loop().create_task(self._play(call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _play(self, call: SimCall) -> None:
        late: dict[str, Any] | None = None  # a progress event held back to arrive last
        progress = self.config.progress  # False: only the final callback is posted
        try:
            await self._emit(call, "initiated", post=progress)
            if call.reorder:
                call.status = "ringing"
                late = self._event(call, "ringing")
            else:
                await self._emit(call, "ringing", post=progress)
            await asyncio.sleep(call.ring_ms / 1000)
            if call.answered:
                await self._emit(call, "in-progress", post=progress)
                await asyncio.sleep(call.talk_ms / 1000)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("playout of %s failed; ending it now", call.call_id)
            late = None
        # Ended in our books first: Switchboard frees the channel on the final callback,
        # and a new call on that channel must not count as a violation.
        self._end(call)
        final = self._event(call, call.status)
        if call.drop:
            self._books.dropped += 1
            log.info("dropping final callback of %s (fault injection)", call.call_id)
        else:
            self._post(call, final)
        if late is not None:
            self._books.reordered += 1
            self._post(call, late)
        if call.sending is not None:
            await call.sending

    def _post(self, call: SimCall, event: dict[str, Any]) -> None:
        """Queue `event` behind the call's earlier callbacks, like a provider's webhook
        queue: delivery is ordered per call and does not hold up the call."""
        previous = call.sending

        async def deliver() -> None:
            if previous is not None:
                await previous
            await self._send(call, event)

        task = call.sending = asyncio.get_running_loop().create_task(deliver())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _end(self, call: SimCall) -> None:
        if call.ended_at is not None:
            return
        b = self._books
        call.status = call.final_status
        call.ended_at = self._clock()
        b.in_flight -= 1
        b.in_flight_by_number[call.request.from_] -= 1
        b.in_flight_by_lead[call.request.lead_id] -= 1
        b.by_outcome[call.outcome] += 1

    async def _emit(self, call: SimCall, status: str, post: bool = True) -> None:
        call.status = status
        if post:
            self._post(call, self._event(call, status))

    def _event(self, call: SimCall, status: str) -> dict[str, Any]:
        final = call.ended_at is not None and status == call.final_status
        return {
            "event_id": uuid.uuid4().hex,
            "call_id": call.call_id,
            "attempt_id": call.request.attempt_id,
            "status": status,
            "duration_s": call.duration_s if final else 0.0,
            "answered_by": call.answered_by if final or status == "in-progress" else None,
            "digits": call.digits if final else None,
            "timestamp": self._clock(),
        }

    async def _send(self, call: SimCall, event: dict[str, Any]) -> None:
        copies = 2 if call.rng.random() < call.duplicate_p else 1
        if copies == 2:
            self._books.duplicated += 1
        for _ in range(copies):
            try:
                ok = await self._deliver(call.request.webhook_url, event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("delivering %s of %s raised", event["status"], call.call_id)
                ok = False
            if ok:
                self._books.callbacks_sent += 1
            else:
                self._books.callbacks_failed += 1


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
