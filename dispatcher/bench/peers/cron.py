"""The legacy design of seeds/000 and 004 as a contender: a cron tick every 30 s runs
`process_backlog_leads`, a serial picker: select due BACKLOG rows (the seed's 500 per
tick), then for each one in turn lock it with a guarded UPDATE, dial (a no-op here), mark
it done. One picker at a time: the tick holds the scheduler's single-task Redis lock, so
a tick that finds the previous one still running is skipped, and more processes would
not add throughput (the seed's "horizontal scale is prevented").

It is the system Switchboard replaces, not Switchboard: its own table, no lifecycle.
`python -m dispatcher.bench.peers.cron --tick-s S --batch N` is the picker process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
import redis

from dispatcher.bench.peers.base import Contender, Shape, recorder
from dispatcher.settings import Settings

TICK_S = 30.0
BATCH = 500  # seed 000: "t=0s cron fires -> SELECT returns 500 rows"

DDL = """
CREATE TABLE cron_leads (
    id bigserial PRIMARY KEY,
    status text NOT NULL DEFAULT 'BACKLOG',
    next_attempt_at timestamptz NOT NULL,
    is_locked boolean NOT NULL DEFAULT false,
    locked_at timestamptz,
    done_at timestamptz
);
CREATE INDEX cron_leads_due ON cron_leads (next_attempt_at) WHERE status = 'BACKLOG';
"""


def next_tick(now: float, tick_s: float) -> float:
    """The next wall-clock multiple of `tick_s` strictly after `now`, as a cron fires."""
    return (now // tick_s + 1) * tick_s


class Cron(Contender):
    name = "cron"

    def __init__(
        self,
        settings: Settings,
        shape: Shape,
        log_dir: Any,
        tick_s: float = TICK_S,
        batch: int = BATCH,
        window_s: float = 60.0,
    ) -> None:
        super().__init__(settings, shape, log_dir)
        self.tick_s = tick_s
        self.batch = batch
        self.burndown_window_s = window_s

    def setup_system(self) -> None:
        self.conn.execute(DDL)

    def start(self) -> None:
        self.spawner.start(
            "picker",
            "-m",
            "dispatcher.bench.peers.cron",
            "--tick-s",
            str(self.tick_s),
            "--batch",
            str(self.batch),
        )

    def insert(self, dues: Sequence[dt.datetime | None]) -> list[int]:
        with self.conn.transaction():
            rows = self.conn.execute(
                "INSERT INTO cron_leads (next_attempt_at)"
                " SELECT coalesce(d, now())"
                " FROM unnest(%s::timestamptz[]) WITH ORDINALITY AS u(d, o)"
                " ORDER BY o RETURNING id",
                (list(dues),),
            ).fetchall()
        return [r[0] for r in rows]

    def enqueue(self, due: dt.datetime) -> int:
        row = self.conn.execute(
            "INSERT INTO cron_leads (next_attempt_at) VALUES (%s) RETURNING id", (due,)
        ).fetchone()
        assert row is not None
        return int(row[0])

    def discard_pending(self) -> None:
        self.conn.execute("DELETE FROM cron_leads WHERE status = 'BACKLOG'")


def process_backlog_leads(conn: psycopg.Connection[Any], batch: int) -> int:
    """One tick: the due rows, then one at a time: lock, dial, done. Returns dials."""
    rows = conn.execute(
        "SELECT id FROM cron_leads WHERE status = 'BACKLOG' AND next_attempt_at <= now()"
        " ORDER BY next_attempt_at LIMIT %s",
        (batch,),
    ).fetchall()
    rec = recorder()
    dialed = 0
    for (lead_id,) in rows:
        locked = conn.execute(
            "UPDATE cron_leads SET is_locked = true, locked_at = now(), status = 'PROCESSING'"
            " WHERE id = %s AND status = 'BACKLOG' AND NOT is_locked RETURNING id",
            (lead_id,),
        ).fetchone()
        if locked is None:
            continue
        rec.add([lead_id])  # the dial: a no-op
        conn.execute(
            "UPDATE cron_leads SET status = 'DONE', is_locked = false, done_at = now()"
            " WHERE id = %s AND status = 'PROCESSING'",
            (lead_id,),
        )
        dialed += 1
    return dialed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tick-s", type=float, default=TICK_S)
    parser.add_argument("--batch", type=int, default=BATCH)
    args = parser.parse_args()
    settings = Settings.load()
    assert settings.database_url and settings.redis_url
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    client = redis.Redis.from_url(settings.redis_url)
    lock_key, holder = f"{settings.redis_prefix}:cron:process_backlog_leads", uuid.uuid4().hex
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        recorder()
        while not stop.wait(max(next_tick(time.time(), args.tick_s) - time.time(), 0.0)):
            # BackgroundTaskScheduler's single-task lock: one tick at a time, anywhere.
            if not client.set(lock_key, holder, nx=True, px=int(args.tick_s * 10_000)):
                continue
            try:
                process_backlog_leads(conn, args.batch)
            finally:
                if client.get(lock_key) == holder.encode():
                    client.delete(lock_key)


if __name__ == "__main__":
    main()
