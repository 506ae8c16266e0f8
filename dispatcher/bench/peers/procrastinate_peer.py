"""Procrastinate as a contender: a no-op async task, worker processes running
`App.run_worker` with `concurrency` (LISTEN/NOTIFY on, its default 5 s polling
fallback, jobs kept: its defaults); `schedule_at` for scheduled items.

`python -m dispatcher.bench.peers.procrastinate_peer --concurrency C --poll-s S` is a
worker process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Sequence
from typing import Any

from dispatcher.bench.peers.base import DATABASE_ENV, Contender, Shape, recorder
from dispatcher.settings import Settings

TASK = "bench_noop"
POLL_S = 5.0  # Procrastinate's default fetch_job_polling_interval


def make_app(database_url: str, sync: bool) -> tuple[Any, Any]:
    """The app and its no-op task; the driver defers through a sync connector, workers
    run on the async one."""
    import procrastinate

    connector = (
        procrastinate.SyncPsycopgConnector(conninfo=database_url)
        if sync
        else procrastinate.PsycopgConnector(conninfo=database_url)
    )
    app = procrastinate.App(connector=connector)

    @app.task(name=TASK)
    async def bench_noop(item: int) -> None:
        recorder().add([item])

    return app, bench_noop


class Procrastinate(Contender):
    name = "procrastinate"

    def __init__(
        self, settings: Settings, shape: Shape, log_dir: Any, poll_s: float = POLL_S
    ) -> None:
        super().__init__(settings, shape, log_dir)
        self.poll_s = poll_s
        self.app, self.task = make_app(self.database_url, sync=True)
        self.app.open()

    def setup_system(self) -> None:
        self.app.schema_manager.apply_schema()

    def start(self) -> None:
        for i in range(self.shape.processes):
            self.spawner.start(
                f"worker{i}",
                "-m",
                "dispatcher.bench.peers.procrastinate_peer",
                "--concurrency",
                str(self.shape.concurrency),
                "--poll-s",
                str(self.poll_s),
            )

    def insert(self, dues: Sequence[dt.datetime | None]) -> list[int]:
        keys = self.keys(len(dues))
        jobs = [
            self.task.configure(schedule_at=due).make_new_job(item=k)
            for k, due in zip(keys, dues, strict=True)
        ]
        self.app.job_manager.batch_defer_jobs(jobs)  # one statement, one transaction
        return keys

    def enqueue(self, due: dt.datetime) -> int:
        (key,) = self.keys(1)
        self.task.configure(schedule_at=due).defer(item=key)
        return key

    def stop(self) -> None:
        super().stop()
        self.app.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--poll-s", type=float, default=POLL_S)
    args = parser.parse_args()
    app, _ = make_app(os.environ[DATABASE_ENV], sync=False)
    recorder()
    app.run_worker(
        concurrency=args.concurrency,
        fetch_job_polling_interval=args.poll_s,
        install_signal_handlers=True,
    )


if __name__ == "__main__":
    main()
