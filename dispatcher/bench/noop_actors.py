"""The no-op dispatch actor of `bench compare`'s queue core: Switchboard's scheduler
claims leads and hands them over here in batches; the actor ends each one through the
lifecycle (QUEUED → SKIPPED, guarded by its fence) and records when it started. No
provider, no channel: what is measured is claim → hand-off → done.

One message carries a batch of (lead id, fence) pairs: Dramatiq moves about 2,000
messages/s per process, so a message per lead would measure Dramatiq, not the queue.

Run with `python -m dramatiq dispatcher.bench.noop_actors -p P -t T` and the settings of
the run in the environment (its Redis prefix names the broker's namespace).
"""

from __future__ import annotations

import threading

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from psycopg_pool import ConnectionPool

from db.pool import open_pool
from dispatcher import lifecycle
from dispatcher.bench.peers.base import recorder
from dispatcher.settings import Settings

QUEUE = "bench_noop"
REASON = "bench_noop"

settings = Settings.load()
broker: dramatiq.Broker = (
    RedisBroker(url=settings.redis_url, namespace=f"{settings.redis_prefix}-dramatiq")
    if settings.redis_url
    else StubBroker()
)
dramatiq.set_broker(broker)

_pool: ConnectionPool | None = None
_pool_lock = threading.Lock()


def pool() -> ConnectionPool:
    global _pool
    with _pool_lock:
        if _pool is None:
            assert settings.database_url, "DATABASE_URL is not set"
            _pool = open_pool(settings.database_url, max_size=settings.db_pool_size)
        return _pool


@dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=5, min_backoff=200, max_backoff=5_000)
def noop_dispatch(claims: list[list[int]]) -> None:
    """End a batch of claimed leads; a stale or repeated claim changes nothing."""
    started = recorder().now()
    with pool().connection() as conn, conn.transaction():
        rows = lifecycle.finish_unattempted_many(
            conn, [(c[0], c[1]) for c in claims], "SKIPPED", REASON
        )
    recorder().add((r["id"] for r in rows), started)
