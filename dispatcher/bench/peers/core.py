"""Switchboard's queue core as a contender: the real scheduler loop (`scheduler.run`:
claims with SKIP LOCKED, sleeps until a NOTIFY or the next due time, runs the
reconcilers) with a `send` that hands the claims to the no-op actor of
`dispatcher.bench.noop_actors` in batches, and Dramatiq worker processes running it.

`python -m dispatcher.bench.peers.core scheduler` is the scheduler process.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row

from dispatcher import lifecycle
from dispatcher.bench.env import BENCH_TEMPLATE
from dispatcher.bench.peers.base import Contender
from dispatcher.lifecycle import Claimed, NewLead

BATCH_ENV = "BENCH_CORE_BATCH"
NUMBERS, CHANNELS = 10, 1000  # channels never bound the run: the queue is measured
INSERT_CHUNK = 5000
T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """`items` in consecutive slices of at most `size`."""
    if size < 1:
        raise ValueError(f"chunk size {size} < 1")
    return [items[i : i + size] for i in range(0, len(items), size)]


class Core(Contender):
    name = "core"
    batch = 50  # leads per message

    def process_env(self) -> dict[str, str]:
        # Dramatiq's idle poll, as `switchboard worker` sets it from SWITCHBOARD_WORKER_POLL_MS.
        env = {
            BATCH_ENV: str(self.batch),
            "dramatiq_worker_timeout": str(self.settings.worker_poll_ms),
        }
        return {**super().process_env(), **env}

    def setup_system(self) -> None:
        for i in range(NUMBERS):
            self.conn.execute(
                "INSERT INTO outbound_numbers (e164, provider, max_channels)"
                " VALUES (%s, 'instant', %s)",
                (f"+1415555{i:04d}", CHANNELS),
            )

    def start(self) -> None:
        self.spawner.start("scheduler", "-m", "dispatcher.bench.peers.core", "scheduler")
        self.spawner.start(
            "workers",
            "-m",
            "dramatiq",
            "dispatcher.bench.noop_actors",
            "--processes",
            str(self.shape.processes),
            "--threads",
            str(self.shape.concurrency),
            "--skip-logging",
        )

    def insert(self, dues: Sequence[dt.datetime | None]) -> list[int]:
        ids: list[int] = []
        with psycopg.connect(self.database_url, row_factory=dict_row) as conn, conn.transaction():
            row = conn.execute("SELECT now() AS t").fetchone()
            assert row is not None
            for part in chunks(dues, INSERT_CHUNK):
                leads = [self._lead(len(ids) + i, due or row["t"]) for i, due in enumerate(part)]
                ids += [i for i in lifecycle.create_leads(conn, leads) if i is not None]
        return ids

    def enqueue(self, due: dt.datetime) -> int:
        with psycopg.connect(self.database_url, row_factory=dict_row) as conn, conn.transaction():
            (lead_id,) = lifecycle.create_leads(conn, [self._lead(self.keys(1)[0], due)])
        assert lead_id is not None
        return lead_id

    @staticmethod
    def _lead(n: int, due: dt.datetime) -> NewLead:
        return NewLead(
            reseller_id="r0",
            phone=f"+1202555{n % 10_000:04d}",
            template=BENCH_TEMPLATE,
            next_attempt_at=due,
        )


def batched_send(size: int) -> Any:
    """The scheduler's `send`: one no-op message per `size` claimed leads."""
    from dispatcher.bench.noop_actors import noop_dispatch

    def send(claimed: Sequence[Claimed]) -> None:
        for part in chunks(claimed, size):
            noop_dispatch.send([[c.lead_id, c.fence] for c in part])

    return send


def scheduler_main() -> None:
    """The `switchboard scheduler` loop with the batched no-op `send`."""
    from dispatcher import logs, scheduler
    from dispatcher.runtime import Runtime
    from dispatcher.settings import Settings

    settings = Settings.load()
    logs.configure(settings.log_level, settings.log_json)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    rt = Runtime.open(settings, providers={})
    try:
        scheduler.run(rt, batched_send(int(os.environ.get(BATCH_ENV, "50"))), stop)
    finally:
        rt.close()


if __name__ == "__main__":
    if sys.argv[1:] != ["scheduler"]:
        raise SystemExit("usage: python -m dispatcher.bench.peers.core scheduler")
    scheduler_main()
