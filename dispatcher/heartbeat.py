"""Heartbeats of the scheduler and worker processes, for `GET /health`.

Kept in Redis, not in a PostgreSQL table. A heartbeat is the kind of state DESIGN.md
gives Redis: worthless after a few seconds and rebuilt by itself (every scheduler loop,
every few seconds per worker). In PostgreSQL each beat would be a row update, so dead
tuples and WAL every scheduler loop, forever, on the database that carries the real
work. In Redis a beat is one script call and /health reads every kind in one more. A
flushed Redis loses the beats for one interval. A Redis that is down already fails
/health, and dispatch cannot run without it anyway.

Layout: one sorted set per process kind, member `host:pid`, score the Redis server's
clock at the last beat, so processes on different machines need no agreed clock. Members
that stopped beating are pruned after `keep_s`, and the key expires when no process of
that kind beats at all. The keys share a hash tag, so one script can read them all on
Redis Cluster.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from dispatcher.settings import Settings

log = structlog.get_logger(__name__)

SCHEDULER = "scheduler"
WORKER = "worker"
KINDS = (SCHEDULER, WORKER)
KEEP_S = 300.0  # a member not seen for this long is dropped from its set
CLIENT_TIMEOUT_S = 2.0

_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local keep = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - keep)
redis.call('EXPIRE', KEYS[1], math.ceil(keep))
return tostring(now)
"""

# For each key: the newest beat's time ('' when none) and how many members beat since
# now - ARGV[1]. Floats travel as strings: Lua numbers returned to Redis are truncated.
_READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {tostring(now)}
for _, key in ipairs(KEYS) do
    local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    table.insert(out, newest[2] or '')
    table.insert(out, redis.call('ZCOUNT', key, now - tonumber(ARGV[1]), '+inf'))
end
return out
"""


@dataclass(frozen=True)
class Seen:
    """What the heartbeats of one process kind say."""

    age_s: float | None  # of the newest beat; None when none was seen in KEEP_S
    alive: int  # processes whose last beat is within the freshness window


def member() -> str:
    """This process's name among its kind."""
    return f"{socket.gethostname()}:{os.getpid()}"


def short_timeout_client(url: str, timeout_s: float = CLIENT_TIMEOUT_S) -> redis.Redis:
    """A client that fails fast and never retries: a heartbeat or a probe must not hang
    the loop or the load balancer waiting on a Redis that is down."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


class Heartbeats:
    """Write and read the heartbeat sets under one key prefix."""

    def __init__(self, client: redis.Redis, prefix: str, keep_s: float = KEEP_S) -> None:
        self._client = client
        self._prefix = prefix
        self._keep_s = keep_s
        self._beat = client.register_script(_BEAT)
        self._read = client.register_script(_READ)
        self._failing = False

    @classmethod
    def open(cls, settings: Settings) -> Heartbeats:
        assert settings.redis_url, "REDIS_URL must be set"
        return cls(short_timeout_client(settings.redis_url), settings.redis_prefix)

    def key(self, kind: str) -> str:
        return f"{self._prefix}:{{heartbeat}}:{kind}"

    def beat(self, kind: str, who: str | None = None) -> None:
        self._beat(keys=[self.key(kind)], args=[who or member(), self._keep_s])

    def beat_safely(self, kind: str, who: str | None = None) -> bool:
        """Beat; on a Redis error log once per outage instead of raising, so a loop that
        beats is never stopped by its heartbeat."""
        try:
            self.beat(kind, who)
        except redis.RedisError as exc:
            if not self._failing:
                log.warning("heartbeat_failed", kind=kind, error=str(exc))
            self._failing = True
            return False
        if self._failing:
            log.info("heartbeat_restored", kind=kind)
        self._failing = False
        return True

    def forget(self, kind: str, who: str | None = None) -> None:
        """Drop this process's beat on a clean stop, so /health sees it gone at once."""
        try:
            self._client.zrem(self.key(kind), who or member())
        except redis.RedisError as exc:
            log.warning("heartbeat_forget_failed", kind=kind, error=str(exc))

    def read(self, fresh_s: float, kinds: tuple[str, ...] = KINDS) -> dict[str, Seen]:
        """Each kind's newest beat age and live count, by the Redis server's clock."""
        raw: list[Any] = self._read(keys=[self.key(k) for k in kinds], args=[fresh_s])
        now = float(raw[0])
        seen: dict[str, Seen] = {}
        for i, kind in enumerate(kinds):
            newest, alive = _text(raw[1 + 2 * i]), int(raw[2 + 2 * i])
            seen[kind] = Seen(max(now - float(newest), 0.0) if newest else None, alive)
        return seen

    def close(self) -> None:
        self._client.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class WorkerHeartbeat(dramatiq.Middleware):
    """Beats for a Dramatiq worker process every `worker_heartbeat_s`, from a thread
    started once the worker has booted, and only while all its consumer and worker
    threads are alive: a worker that cannot take messages must not look healthy."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beats: Heartbeats | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._beats = Heartbeats.open(self._settings)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(worker,), name="switchboard-heartbeat", daemon=True
        )
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._beats is not None:
            self._beats.forget(WORKER)
            self._beats.close()

    def _run(self, worker: dramatiq.Worker) -> None:
        assert self._beats is not None
        while not self._stop.is_set():
            if _threads_alive(worker):
                self._beats.beat_safely(WORKER)
            self._stop.wait(self._settings.worker_heartbeat_s)


def _threads_alive(worker: dramatiq.Worker) -> bool:
    threads = [*worker.consumers.values(), *worker.workers]
    return bool(threads) and all(t.is_alive() for t in threads)
