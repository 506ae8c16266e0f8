"""PgQueuer as a contender: a no-op async entrypoint, one QueueManager per worker process,
`batch_size` = the concurrency (10), its defaults otherwise (LISTEN/NOTIFY, 0.1 s minimum
re-poll, no global task cap); `execute_after` for scheduled items.

On asyncpg, its first driver, when asyncpg is installed. The psycopg driver is the
fallback only: it waits for notifications with the connection's lock held for up to a
second at a time, so its queries queue behind the listener (about 150 jobs/s and
second-long pickups here), which would measure the driver, not PgQueuer.

`python -m dispatcher.bench.peers.pgqueuer_peer --batch-size N` is a worker process.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import os
import signal
from collections.abc import Sequence
from typing import Any

import psycopg

from dispatcher.bench.peers.base import DATABASE_ENV, Contender, Shape, recorder
from dispatcher.settings import Settings

ENTRYPOINT = "bench_noop"


def delays(dues: Sequence[dt.datetime | None], now: dt.datetime) -> list[dt.timedelta | None]:
    """`execute_after` is relative to the inserting statement's now(): the due times as
    offsets from `now`, read in the same transaction (so the sum is exact)."""
    return [None if due is None else due - now for due in dues]


def has_asyncpg() -> bool:
    return importlib.util.find_spec("asyncpg") is not None


class Connection:
    """One connection and PgQueuer's queries over it, on asyncpg or else psycopg."""

    def __init__(self, conn: Any, queries: Any, asyncpg: bool) -> None:
        self.conn = conn
        self.queries = queries
        self.asyncpg = asyncpg

    @classmethod
    async def open(cls, database_url: str) -> Connection:
        from pgqueuer import Queries

        if has_asyncpg():
            import asyncpg
            from pgqueuer import AsyncpgDriver

            conn = await asyncpg.connect(database_url)
            return cls(conn, Queries(AsyncpgDriver(conn)), True)
        from pgqueuer import PsycopgDriver

        aconn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        return cls(aconn, Queries(PsycopgDriver(aconn)), False)

    async def now(self) -> dt.datetime:
        if self.asyncpg:
            return await self.conn.fetchval("SELECT now()")  # type: ignore[no-any-return]
        cur = await self.conn.execute("SELECT now()")
        row = await cur.fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self.conn.close()


class PgQueuer(Contender):
    name = "pgqueuer"

    def __init__(self, settings: Settings, shape: Shape, log_dir: Any) -> None:
        super().__init__(settings, shape, log_dir)
        self.loop = asyncio.new_event_loop()
        self.pg = self.loop.run_until_complete(Connection.open(self.database_url))
        self.queries = self.pg.queries

    def setup_system(self) -> None:
        self.loop.run_until_complete(self.queries.install())

    def start(self) -> None:
        for i in range(self.shape.processes):
            self.spawner.start(
                f"worker{i}",
                "-m",
                "dispatcher.bench.peers.pgqueuer_peer",
                "--batch-size",
                str(self.shape.concurrency),
            )

    async def _enqueue(self, keys: list[int], dues: Sequence[dt.datetime | None]) -> None:
        async with self.pg.conn.transaction():
            now = await self.pg.now()
            await self.queries.enqueue(
                [ENTRYPOINT] * len(keys),
                [str(k).encode() for k in keys],
                [0] * len(keys),
                delays(dues, now),
            )

    def insert(self, dues: Sequence[dt.datetime | None]) -> list[int]:
        keys = self.keys(len(dues))
        self.loop.run_until_complete(self._enqueue(keys, dues))
        return keys

    def enqueue(self, due: dt.datetime) -> int:
        keys = self.keys(1)
        self.loop.run_until_complete(self._enqueue(keys, [due]))
        return keys[0]

    def stop(self) -> None:
        super().stop()
        self.loop.run_until_complete(self.pg.close())
        self.loop.close()


async def consume(database_url: str, batch_size: int) -> None:
    from pgqueuer import QueueManager
    from pgqueuer.models import Job

    pg = await Connection.open(database_url)
    qm = QueueManager(pg.queries)

    @qm.entrypoint(ENTRYPOINT)
    async def bench_noop(job: Job) -> None:
        assert job.payload is not None
        recorder().add([int(job.payload)])

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, qm.shutdown.set)
    try:
        await qm.run(batch_size=batch_size)
    finally:
        await pg.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=10)
    args = parser.parse_args()
    recorder()
    asyncio.run(consume(os.environ[DATABASE_ENV], args.batch_size))


if __name__ == "__main__":
    main()
