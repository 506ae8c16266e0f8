"""Dramatiq actors and the broker they run on.

The broker is Redis when REDIS_URL is set and Dramatiq's StubBroker otherwise (unit
tests). Delivery is at least once: the fence and the lifecycle's guarded updates, not
the broker, make a dial happen once.
"""

from __future__ import annotations

import threading

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from dispatcher import dispatch, metrics
from dispatcher.runtime import Runtime
from dispatcher.settings import Settings

DISPATCH_QUEUE = "dispatch"


def make_broker(settings: Settings) -> dramatiq.Broker:
    if settings.redis_url:
        return RedisBroker(url=settings.redis_url, namespace=f"{settings.redis_prefix}-dramatiq")
    return StubBroker()


broker = make_broker(Settings.load())
dramatiq.set_broker(broker)

_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def use_runtime(runtime: Runtime | None) -> None:
    """Set the runtime actors use in this process (tests; otherwise opened on first use)."""
    global _runtime
    _runtime = runtime


def runtime() -> Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime.open(Settings.load())
        return _runtime


@dramatiq.actor(queue_name=DISPATCH_QUEUE, max_retries=5, min_backoff=200, max_backoff=5_000)
def dispatch_leads(claims: list[list[int]]) -> None:
    """A batch of claimed leads, [[lead_id, fence], ...]: one message per batch, because
    a message per lead caps a worker process at Dramatiq's ~2,000 messages/s."""
    results = dispatch.dispatch_batch(runtime(), [(c[0], c[1]) for c in claims])
    for result in results.values():
        metrics.DISPATCHES.labels(result=result).inc()


@dramatiq.actor(queue_name=DISPATCH_QUEUE, max_retries=5, min_backoff=200, max_backoff=5_000)
def dispatch_lead(lead_id: int, fence: int) -> None:
    """One lead: messages sent before batching still drain after an upgrade."""
    dispatch_leads([[lead_id, fence]])
