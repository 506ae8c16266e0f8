"""The Redis ZSET design of seeds/000 as a contender, built on `dispatcher.zset`:

- ingest: insert the row in PostgreSQL, then ZADD schedule:leads (score = due, ms);
- a promoter candidate per worker process; the one elected leader (SET NX PX, renewed
  by compare-and-set every 2 s) moves due ids every 200 ms by Lua to the sharded ready
  lists (one shard per worker process);
- workers (the same count as everyone's: processes x threads) BLPOP their shard, RPUSH
  to their processing list, load the row and lock it (guarded UPDATE), BLPOP a token
  from channel:{number} (pre-filled with the number's channels: they never bound the
  run), dial (a no-op), LPUSH the token back (the call-end webhook's release, at once for
  a no-op call), mark the row done, LREM;
- the seed's reconcilers at their intervals, each under a single-task lock: backlog →
  ZSET (60 s), stuck processing lists (30 s), channel tokens (60 s), stale row locks
  (300 s).

`python -m dispatcher.bench.peers.zset_design promoter|control|worker ...` are its
processes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import redis

from dispatcher import zset
from dispatcher.bench.peers.base import Contender, Shape, recorder
from dispatcher.settings import Settings

NUMBERS, CHANNELS = 10, 1000
PROMOTE_MS = 200
LEADER_TTL_S, LEADER_RENEW_S = 5.0, 2.0  # seed: "up to 5s of dispatch pause", "renewed every 2s"
TOKEN_WAIT_S = 10  # seed: BLPOP channel:{number} timeout=10s
STUCK_AFTER_S = 300.0  # seed: processing entries "held > 5 min"
STALE_LOCK_S = 600.0  # seed: "locked_at > 10 min"

DDL = """
CREATE TABLE zs_numbers (id integer PRIMARY KEY, max_channels integer NOT NULL);
CREATE TABLE zs_leads (
    id bigserial PRIMARY KEY,
    status text NOT NULL DEFAULT 'BACKLOG',
    next_attempt_at timestamptz NOT NULL,
    is_locked boolean NOT NULL DEFAULT false,
    locked_at timestamptz,
    number_id integer,
    done_at timestamptz
);
CREATE INDEX zs_leads_backlog ON zs_leads (next_attempt_at) WHERE status = 'BACKLOG';
"""


@dataclass(frozen=True)
class Intervals:
    """The seed's reconciler intervals (06-operations), in seconds."""

    backlog_to_zset_s: float = 60.0
    stuck_processing_s: float = 30.0
    channel_tokens_s: float = 60.0
    stale_locks_s: float = 300.0


def channel_key(prefix: str, number_id: int) -> str:
    return f"{prefix}channel:{number_id}"


def due_ms(due: dt.datetime, offset_s: float) -> int:
    """A due time on the database's clock as a score on the local clock (the promoter
    compares scores with its own `time.time()`)."""
    return int((due.timestamp() - offset_s) * 1000)


class ZsetDesign(Contender):
    name = "zset"

    def __init__(
        self,
        settings: Settings,
        shape: Shape,
        log_dir: Any,
        promote_ms: int = PROMOTE_MS,
        intervals: Intervals | None = None,
    ) -> None:
        super().__init__(settings, shape, log_dir)
        self.promote_ms = promote_ms
        self.intervals = intervals or Intervals()
        self.keys = zset.Keys(self.prefix, shards=shape.processes)
        self.client = redis.Redis.from_url(self.redis_url)
        self._offset_s: float | None = None

    @property
    def offset_s(self) -> float:
        if self._offset_s is None:
            from dispatcher.bench.peers.base import clock_offset_s

            self._offset_s = clock_offset_s(self.conn)
        return self._offset_s

    def setup_system(self) -> None:
        self.conn.execute(DDL)
        pipe = self.client.pipeline(transaction=False)
        for n in range(1, NUMBERS + 1):
            self.conn.execute("INSERT INTO zs_numbers VALUES (%s, %s)", (n, CHANNELS))
            pipe.delete(channel_key(self.prefix, n))
            pipe.rpush(channel_key(self.prefix, n), *[f"t{n}.{i}" for i in range(CHANNELS)])
        pipe.execute()

    def start(self) -> None:
        module = "dispatcher.bench.peers.zset_design"
        common = ["--prefix", self.prefix, "--shards", str(self.keys.shards)]
        for i in range(self.shape.processes):  # a candidate per pod; one leads
            self.spawner.start(
                f"promoter{i}", "-m", module, "promoter", *common, "--tick-ms", str(self.promote_ms)
            )
        iv = self.intervals
        self.spawner.start(
            "control",
            "-m",
            module,
            "control",
            *common,
            "--intervals",
            *(str(x) for x in (iv.backlog_to_zset_s, iv.stuck_processing_s)),
            *(str(x) for x in (iv.channel_tokens_s, iv.stale_locks_s)),
        )
        for shard in range(self.keys.shards):
            self.spawner.start(
                f"worker{shard}",
                "-m",
                module,
                "worker",
                *common,
                "--shard",
                str(shard),
                "--threads",
                str(self.shape.concurrency),
            )

    def insert(self, dues: Sequence[dt.datetime | None]) -> list[int]:
        with self.conn.transaction():
            rows = self.conn.execute(
                "INSERT INTO zs_leads (next_attempt_at)"
                " SELECT coalesce(d, now())"
                " FROM unnest(%s::timestamptz[]) WITH ORDINALITY AS u(d, o)"
                " ORDER BY o RETURNING id, next_attempt_at",
                (list(dues),),
            ).fetchall()
        pipe = self.client.pipeline(transaction=False)
        for lead_id, at in rows:
            zset.schedule(pipe, self.keys, lead_id, due_ms(at, self.offset_s))
        pipe.execute()
        return [r[0] for r in rows]

    def enqueue(self, due: dt.datetime) -> int:
        row = self.conn.execute(
            "INSERT INTO zs_leads (next_attempt_at) VALUES (%s) RETURNING id", (due,)
        ).fetchone()
        assert row is not None
        zset.schedule(self.client, self.keys, int(row[0]), due_ms(due, self.offset_s))
        return int(row[0])

    def stop(self) -> None:
        super().stop()
        self.client.close()


# --- the processes ------------------------------------------------------------------------


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def promoter_main(settings: Settings, keys: zset.Keys, tick_ms: int) -> None:
    """Lead or wait; while leading, promote every `tick_ms`."""
    assert settings.redis_url
    stop = _stop_event()
    client = redis.Redis.from_url(settings.redis_url)
    leader = zset.Leader(client, keys.lock, uuid.uuid4().hex, LEADER_TTL_S, LEADER_RENEW_S)
    promoter = zset.Promoter(client, keys)
    tick = tick_ms / 1000
    next_at = time.monotonic()
    try:
        while not stop.is_set():
            try:
                if leader.step():
                    promoter.promote()
            except redis.RedisError:
                time.sleep(tick)
            next_at += tick
            stop.wait(max(next_at - time.monotonic(), 0.0))
    finally:
        leader.release()
        client.close()


class Reconcilers:
    """The seed's control-plane jobs over the ZSET design's keys and table."""

    def __init__(
        self, conn: psycopg.Connection[Any], client: redis.Redis, keys: zset.Keys, prefix: str
    ) -> None:
        self.conn = conn
        self.client = client
        self.keys = keys
        self.prefix = prefix
        self._first_seen: dict[tuple[str, str], float] = {}

    def backlog_to_zset(self, interval_s: float) -> int:
        """BACKLOG rows not in schedule:leads go back in (lost ingest, crashed workers).
        Only rows due more than one interval ago: younger ones may be on a ready list."""
        rows = self.conn.execute(
            "SELECT id FROM zs_leads WHERE status = 'BACKLOG' AND NOT is_locked"
            " AND next_attempt_at < now() - make_interval(secs => %s)",
            (interval_s,),
        ).fetchall()
        pipe = self.client.pipeline(transaction=False)
        for (lead_id,) in rows:
            pipe.zscore(self.keys.schedule, str(lead_id))
        missing = [r[0] for r, score in zip(rows, pipe.execute(), strict=True) if score is None]
        now = zset.now_ms()
        for lead_id in missing:  # seed 04: jitter rand(0, 2000 ms) against a thundering herd
            zset.schedule(pipe, self.keys, lead_id, now + random.randint(0, 2000))
        pipe.execute()
        return len(missing)

    def stuck_processing(self) -> int:
        """Ids held on a processing list past STUCK_AFTER_S whose row is still BACKLOG and
        unlocked are scheduled again now."""
        now, seen, requeued = time.monotonic(), set(), 0
        for key in self.client.scan_iter(match=self.keys.processing_pattern, count=1000):
            for member in self.client.lrange(key, 0, -1):
                mark = (key.decode(), member.decode())
                seen.add(mark)
                first = self._first_seen.setdefault(mark, now)
                if now - first < STUCK_AFTER_S:
                    continue
                row = self.conn.execute(
                    "SELECT 1 FROM zs_leads WHERE id = %s AND status = 'BACKLOG' AND NOT is_locked",
                    (int(member),),
                ).fetchone()
                self.client.lrem(key, 1, member)
                if row is not None:
                    zset.schedule(self.client, self.keys, int(member), zset.now_ms())
                    requeued += 1
        self._first_seen = {k: v for k, v in self._first_seen.items() if k in seen}
        return requeued

    def channel_tokens(self) -> int:
        """Top each number's token list up to max_channels - calls in flight."""
        added = 0
        rows = self.conn.execute(
            "SELECT n.id, n.max_channels, (SELECT count(*) FROM zs_leads l"
            " WHERE l.number_id = n.id AND l.is_locked) FROM zs_numbers n"
        ).fetchall()
        for number_id, max_channels, in_flight in rows:
            key = channel_key(self.prefix, number_id)
            missing = max_channels - in_flight - int(self.client.llen(key))
            if missing > 0:
                self.client.rpush(
                    key, *[f"r{number_id}.{uuid.uuid4().hex}" for _ in range(missing)]
                )
                added += missing
        return added

    def stale_locks(self) -> int:
        """Free rows locked longer than STALE_LOCK_S (last-line defense)."""
        cur = self.conn.execute(
            "UPDATE zs_leads SET is_locked = false, locked_at = NULL"
            " WHERE is_locked AND status = 'BACKLOG'"
            " AND locked_at < now() - make_interval(secs => %s)",
            (STALE_LOCK_S,),
        )
        return cur.rowcount


def control_main(settings: Settings, keys: zset.Keys, prefix: str, intervals: Intervals) -> None:
    """Each reconciler every its interval, under BackgroundTaskScheduler's single-task
    lock (SET NX PX), first run one interval after start."""
    assert settings.database_url and settings.redis_url
    stop = _stop_event()
    client = redis.Redis.from_url(settings.redis_url)
    conn = psycopg.connect(settings.database_url, autocommit=True)
    rec = Reconcilers(conn, client, keys, prefix)
    jobs: list[tuple[str, float, Callable[[], int]]] = [
        ("backlog_to_zset", intervals.backlog_to_zset_s,
         lambda: rec.backlog_to_zset(intervals.backlog_to_zset_s)),
        ("stuck_processing", intervals.stuck_processing_s, rec.stuck_processing),
        ("channel_tokens", intervals.channel_tokens_s, rec.channel_tokens),
        ("stale_locks", intervals.stale_locks_s, rec.stale_locks),
    ]  # fmt: skip
    due = {name: time.monotonic() + every for name, every, _ in jobs}
    try:
        while not stop.is_set():
            for name, every, job in jobs:
                if time.monotonic() < due[name]:
                    continue
                due[name] = time.monotonic() + every
                lock = f"{prefix}task-lock:{name}"
                if client.set(lock, "1", nx=True, px=int(every * 1000)):
                    try:
                        job()
                    finally:
                        client.delete(lock)
            stop.wait(min(max(d - time.monotonic(), 0.0) for d in due.values()))
    finally:
        conn.close()
        client.close()


def worker_main(settings: Settings, keys: zset.Keys, prefix: str, shard: int, threads: int) -> None:
    """`threads` consumers of one shard."""
    assert settings.database_url and settings.redis_url
    stop = _stop_event()
    client = redis.Redis.from_url(settings.redis_url, max_connections=2 * threads + 2)
    recorder()
    worker_id = uuid.uuid4().hex[:8]

    def consume(n: int) -> None:
        assert settings.database_url
        consumer = zset.Consumer(client, keys, f"{worker_id}-{n}")
        numbers = list(range(1, NUMBERS + 1))
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            while not stop.is_set():
                lead_id = consumer.pop(shard, timeout_s=1.0)
                if lead_id is None:
                    continue
                try:
                    work(conn, client, keys, prefix, lead_id, random.choice(numbers))
                finally:
                    consumer.done(lead_id)

    pool = [threading.Thread(target=consume, args=(n,), daemon=True) for n in range(threads)]
    for t in pool:
        t.start()
    stop.wait()
    for t in pool:
        t.join(timeout=5)


def work(
    conn: psycopg.Connection[Any],
    client: redis.Redis,
    keys: zset.Keys,
    prefix: str,
    lead_id: int,
    number_id: int,
) -> bool:
    """The seed's steps 3-10 for one popped id (pre-checks, calling hours and the rate
    limit pass: a no-op lead is never held back by them). True when it dialed."""
    row = conn.execute("SELECT status FROM zs_leads WHERE id = %s", (lead_id,)).fetchone()
    if row is None or row[0] != "BACKLOG":
        return False  # already handled (or cancelled)
    locked = conn.execute(
        "UPDATE zs_leads SET is_locked = true, locked_at = now(), number_id = %s"
        " WHERE id = %s AND status = 'BACKLOG' AND NOT is_locked RETURNING id",
        (number_id, lead_id),
    ).fetchone()
    if locked is None:
        return False  # someone else owns it
    channel = channel_key(prefix, number_id)
    got = client.blpop([channel], timeout=TOKEN_WAIT_S)
    if got is None:  # every channel busy: try again in 1-3 s
        conn.execute(
            "UPDATE zs_leads SET is_locked = false, locked_at = NULL WHERE id = %s", (lead_id,)
        )
        zset.schedule(client, keys, lead_id, zset.now_ms() + random.randint(1000, 3000))
        return False
    recorder().add([lead_id])  # the dial: a no-op
    client.lpush(channel, got[1])
    conn.execute(
        "UPDATE zs_leads SET status = 'DONE', is_locked = false, done_at = now()"
        " WHERE id = %s AND is_locked",
        (lead_id,),
    )
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("promoter", "control", "worker"))
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--shards", type=int, required=True)
    parser.add_argument("--tick-ms", type=int, default=PROMOTE_MS)
    parser.add_argument("--intervals", type=float, nargs=4)
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--threads", type=int, default=10)
    args = parser.parse_args()
    settings = Settings.load()
    keys = zset.Keys(args.prefix, shards=args.shards)
    if args.role == "promoter":
        promoter_main(settings, keys, args.tick_ms)
    elif args.role == "control":
        control_main(settings, keys, args.prefix, Intervals(*(args.intervals or ())))
    else:
        worker_main(settings, keys, args.prefix, args.shard, args.threads)


if __name__ == "__main__":
    main()
