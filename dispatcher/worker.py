"""The broker module `switchboard worker` hands to Dramatiq: the actors, plus what only
worker processes need: a heartbeat for /health and, unless
SWITCHBOARD_WORKER_METRICS_PORT is 0, Prometheus metrics.

Kept apart from `dispatcher.actors`, which the API and the scheduler import to send
messages: their brokers must not carry worker-only middleware.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dramatiq.middleware.prometheus import Prometheus

from dispatcher.actors import broker
from dispatcher.heartbeat import WorkerHeartbeat
from dispatcher.metrics import serve_worker_metrics
from dispatcher.settings import Settings


class WorkerPrometheus(Prometheus):
    """Dramatiq's own metrics (messages, errors, retries, durations, in progress), served
    with ours by `metrics.serve_worker_metrics`. That fork takes its port and host from
    our settings, and a port in use is logged rather than a crashed fork."""

    @property
    def forks(self) -> list[Callable[..., Any]]:
        return [serve_worker_metrics]


settings = Settings.load()
broker.add_middleware(WorkerHeartbeat(settings))
if settings.worker_metrics_port:
    broker.add_middleware(WorkerPrometheus())

__all__ = ["broker"]
