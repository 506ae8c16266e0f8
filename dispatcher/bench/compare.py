"""`bench compare`: Switchboard's queue core against the legacy cron picker, the Redis
ZSET design of seeds/000, Procrastinate and PgQueuer, each in real processes with the
same worker count, on its own fresh database on the same PostgreSQL server, given the
same items:

1. burn-down: N items inserted due now in one transaction; throughput = N / (last start
   - the commit). The cron picker, which needs minutes, is measured over a bounded
   window and its rate extrapolated (`cron.burndown_extrapolated` = 1);
2. pickup at a steady rate: items pre-inserted with due times evenly spaced; start - due;
3. lateness: items enqueued one by one at a steady rate, each scheduled `ahead_s` after
   its enqueue; start - scheduled.

Start times come from the contenders' own `bench_started` rows (see `peers.base`).
Ratios are core / peer: above 1 is better for throughput, below 1 for latencies.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dispatcher.bench import stats
from dispatcher.bench.env import BenchEnv
from dispatcher.bench.peers.base import Clock, Contender, Shape
from dispatcher.bench.peers.zset_design import Intervals

CONTENDERS = ("core", "cron", "zset", "procrastinate", "pgqueuer")
PEERS = CONTENDERS[1:]
RATIO_METRICS = {
    "burndown": "burndown_per_s",
    "pickup_p50": "pickup_p50_ms",
    "pickup_p99": "pickup_p99_ms",
    "lateness_p50": "lateness_p50_ms",
    "lateness_p99": "lateness_p99_ms",
}
PHASE_SLACK_S = 120.0  # beyond what a phase needs before it is declared incomplete


@dataclass(frozen=True)
class Sizes:
    items: int = 20_000  # burn-down
    rate: float = 200.0  # steady pickup: items due per second ...
    seconds: float = 10.0  # ... for this long
    scheduled: int = 1_000  # lateness: items ...
    ahead_s: float = 5.0  # ... each scheduled this far after its enqueue ...
    scheduled_rate: float = 100.0  # ... enqueued at this rate
    lead_s: float = 2.0  # steady items' first due time after loading starts


@dataclass(frozen=True)
class Options:
    shape: Shape = field(default_factory=Shape)
    sizes: Sizes = field(default_factory=Sizes)
    contenders: tuple[str, ...] = CONTENDERS
    core_batch: int = 50
    cron_tick_s: float = 30.0
    cron_batch: int = 500
    cron_window_s: float | None = 60.0  # None: the cron burn-down runs to the end
    zset_promote_ms: int = 200
    zset_intervals: Intervals = field(default_factory=Intervals)
    procrastinate_poll_s: float = 5.0


Inspect = Callable[[str, Contender, Mapping[str, float]], None]


def build(name: str, env: BenchEnv, url: str, opts: Options) -> Contender:
    from dispatcher.bench.peers import core, cron, pgqueuer_peer, procrastinate_peer, zset_design

    shape = opts.shape
    settings = env.settings(
        url,
        worker_processes=shape.processes,
        worker_threads=shape.concurrency,
        db_pool_size=shape.concurrency + 2,
    )
    log_dir = env.work_dir / "logs" / "compare"
    if name == "core":
        the_core = core.Core(settings, shape, log_dir)
        the_core.batch = opts.core_batch
        return the_core
    if name == "cron":
        return cron.Cron(
            settings, shape, log_dir, opts.cron_tick_s, opts.cron_batch, opts.cron_window_s
        )
    if name == "zset":
        return zset_design.ZsetDesign(
            settings, shape, log_dir, opts.zset_promote_ms, opts.zset_intervals
        )
    if name == "procrastinate":
        return procrastinate_peer.Procrastinate(settings, shape, log_dir, opts.procrastinate_poll_s)
    if name == "pgqueuer":
        return pgqueuer_peer.PgQueuer(settings, shape, log_dir)
    raise ValueError(f"unknown contender {name!r}; one of {', '.join(CONTENDERS)}")


def run(env: BenchEnv, opts: Options, inspect: Inspect | None = None) -> dict[str, float]:
    """Every contender in turn, then the ratios: one flat dict."""
    return merge({name: run_one(env, name, opts, inspect) for name in opts.contenders})


def merge(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per-contender figures as `name.key`, plus the ratios of the core to each peer."""
    out = {
        f"{name}.{key}": value
        for name, figures in results.items()
        for key, value in figures.items()
    }
    out.update(ratios(out))
    return out


def run_one(
    env: BenchEnv, name: str, opts: Options, inspect: Inspect | None = None
) -> dict[str, float]:
    """One contender on a fresh database and Redis prefix, both dropped afterwards;
    `inspect` sees its database before that (tests read the results tables there)."""
    with env.database(f"cmp_{name}") as url:
        c = build(name, env, url, opts)
        try:
            c.setup()
            c.start()
            m = Measure(c, opts.sizes, drain_s=_drain_s(opts) if name == "cron" else None)
            m.warm_up()
            result = {**m.burndown(), **m.steady(), **m.scheduled()}
            result["duplicates"] = float(m.duplicates())
            if inspect is not None:
                inspect(name, c, result)
        finally:
            c.stop()
            env.forget_redis(c.settings)
    return result


def _drain_s(opts: Options) -> Callable[[int], float]:
    """How long the cron picker needs for n items: a tick per `batch`, plus one."""
    return lambda n: (math.ceil(n / opts.cron_batch) + 1) * opts.cron_tick_s


def ratios(out: Mapping[str, float]) -> dict[str, float]:
    """core / each peer present, per metric in RATIO_METRICS."""
    res: dict[str, float] = {}
    for peer in PEERS:
        for label, metric in RATIO_METRICS.items():
            ours, theirs = out.get(f"core.{metric}"), out.get(f"{peer}.{metric}")
            if ours is None or theirs is None:
                continue
            r = stats.ratio(ours, theirs)
            if r is not None:
                res[f"ratio.core_vs_{peer}.{label}"] = r
    return res


def burndown_figures(
    committed: dt.datetime, starts: Sequence[dt.datetime], n: int, window_s: float | None
) -> dict[str, float]:
    """Throughput of a burn-down of `n` items visible from `committed`: to the last start,
    or (window) the items started within it per second, extrapolated to all `n`."""
    out: dict[str, float] = {"burndown_offered": n, "burndown_extrapolated": 0.0}
    if window_s is None:
        out["burndown_items"] = len(starts)
        out["burndown_complete"] = float(len(starts) >= n)
        if starts:
            out["burndown_per_s"] = stats.span_rate([committed], starts)
            out["burndown_s"] = (max(starts) - committed).total_seconds()
        return out
    end = committed + dt.timedelta(seconds=window_s)
    done = [s for s in starts if s <= end]
    per_s = stats.rate(len(done), window_s)
    out.update(
        burndown_items=len(done),
        burndown_complete=float(len(done) >= n),
        burndown_extrapolated=1.0,
        burndown_window_s=window_s,
        burndown_per_s=per_s,
    )
    if per_s:
        out["burndown_s"] = n / per_s
    return out


def first_run_rate(starts: Sequence[dt.datetime], gap_s: float) -> float | None:
    """Items/s of the first uninterrupted run of starts (none further apart than `gap_s`):
    how fast a cron tick works while it works. None with fewer than two."""
    ordered = sorted(starts)
    end = 1
    while end < len(ordered) and (ordered[end] - ordered[end - 1]).total_seconds() <= gap_s:
        end += 1
    if end < 2:
        return None
    return stats.rate(end - 1, (ordered[end - 1] - ordered[0]).total_seconds())


def latency_figures(
    prefix: str, pairs: Sequence[tuple[dt.datetime, dt.datetime]]
) -> dict[str, float]:
    """p50/p95/p99/max of start - due, in ms, as `{prefix}_p50_ms` etc."""
    summary = stats.latency_summary(stats.pickup_ms(pairs))
    return {f"{prefix}_{k}_ms": v for k, v in summary.items() if k != "count"}


class Measure:
    """The three measurements on one running contender, read from its database."""

    def __init__(
        self, c: Contender, sizes: Sizes, drain_s: Callable[[int], float] | None = None
    ) -> None:
        self.c = c
        self.sizes = sizes
        self.drain_s = drain_s or (lambda n: 0.0)
        self.clock = Clock(c.database_url)

    def db_now(self) -> dt.datetime:
        row = self.c.conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        return row[0]

    def register(self, phase: str, keys: Sequence[int], dues: Sequence[dt.datetime]) -> None:
        with (
            self.c.conn.cursor() as cur,
            cur.copy("COPY bench_items (item, phase, due_at) FROM STDIN") as copy,
        ):
            for key, due in zip(keys, dues, strict=True):
                copy.write_row((key, phase, due))

    def started(self, phase: str) -> int:
        row = self.c.conn.execute(
            "SELECT count(DISTINCT s.item) FROM bench_started s"
            " JOIN bench_items i USING (item) WHERE i.phase = %s",
            (phase,),
        ).fetchone()
        return int(row[0]) if row else 0

    def wait(self, phase: str, n: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            self.c.spawner.check_alive()
            if self.started(phase) >= n:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def pairs(self, phase: str) -> list[tuple[dt.datetime, dt.datetime]]:
        """(due, first start) of each started item of `phase`."""
        rows = self.c.conn.execute(
            "SELECT i.due_at, min(s.started_at) FROM bench_items i"
            " JOIN bench_started s USING (item) WHERE i.phase = %s GROUP BY i.item, i.due_at",
            (phase,),
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def duplicates(self) -> int:
        row = self.c.conn.execute(
            "SELECT count(*) - count(DISTINCT item) FROM bench_started"
        ).fetchone()
        return int(row[0]) if row else 0

    def warm_up(self) -> None:
        """One item through every process before anything is measured."""
        keys = self.c.insert([None])
        self.register("warm", keys, [self.db_now()])
        if not self.wait("warm", 1, 60 + self.drain_s(1)):
            raise RuntimeError(f"{self.c.name} started nothing within the warm-up")

    def burndown(self) -> dict[str, float]:
        n = self.sizes.items
        keys = self.c.insert([None] * n)
        committed = self.db_now()
        self.register("burndown", keys, [committed] * n)
        window = self.c.burndown_window_s
        if window is None:
            # Generous (20 items/s): a burn-down cut short would spill into the next phase.
            self.wait("burndown", n, PHASE_SLACK_S + n / 20 + self.drain_s(n))
        else:
            self.wait("burndown", n, window - (self.db_now() - committed).total_seconds())
            self.c.discard_pending()
        starts = [s for _, s in self.pairs("burndown")]
        out = burndown_figures(committed, starts, n, window)
        if self.drain_s(n):  # a cron: how fast its serial loop runs within a tick
            tick_rate = first_run_rate(starts, gap_s=0.25)
            if tick_rate is not None:
                out["burndown_tick_rate_per_s"] = tick_rate
        return out

    def steady(self) -> dict[str, float]:
        s = self.sizes
        n = max(int(s.rate * s.seconds), 1)
        first = self.db_now() + dt.timedelta(seconds=s.lead_s + n / 5000)
        dues = [first + dt.timedelta(seconds=i / s.rate) for i in range(n)]
        keys = self.c.insert(dues)
        self.register("steady", keys, dues)
        late = self.db_now() > first  # loading overran the lead: early items look late
        complete = self.wait("steady", n, s.lead_s + s.seconds + PHASE_SLACK_S + self.drain_s(n))
        pairs = self.pairs("steady")
        return {
            "pickup_offered": n,
            "pickup_started": len(pairs),
            "pickup_complete": float(complete),
            "pickup_load_overran": float(late),
            **latency_figures("pickup", pairs),
        }

    def scheduled(self) -> dict[str, float]:
        s = self.sizes
        keys: list[int] = []
        dues: list[dt.datetime] = []
        t0 = time.monotonic()
        for i in range(s.scheduled):
            time.sleep(max(t0 + i / s.scheduled_rate - time.monotonic(), 0.0))
            due = self.clock.now_dt() + dt.timedelta(seconds=s.ahead_s)
            keys.append(self.c.enqueue(due))
            dues.append(due)
        self.register("scheduled", keys, dues)
        complete = self.wait(
            "scheduled", s.scheduled, s.ahead_s + PHASE_SLACK_S + self.drain_s(s.scheduled)
        )
        pairs = self.pairs("scheduled")
        return {
            "lateness_offered": s.scheduled,
            "lateness_started": len(pairs),
            "lateness_complete": float(complete),
            **latency_figures("lateness", pairs),
        }


def describe(opts: Options) -> dict[str, Any]:
    """The options as recorded with the results."""
    from dispatcher.bench.peers.pgqueuer_peer import has_asyncpg

    return {
        "shape": opts.shape,
        "sizes": opts.sizes,
        "contenders": list(opts.contenders),
        "core": {"batch_per_message": opts.core_batch, "scheduler_processes": 1},
        "cron": {"tick_s": opts.cron_tick_s, "batch": opts.cron_batch,
                 "window_s": opts.cron_window_s, "pickers": 1},
        "zset": {"promote_ms": opts.zset_promote_ms, "intervals": opts.zset_intervals,
                 "shards": opts.shape.processes},
        "procrastinate": {"concurrency": opts.shape.concurrency,
                          "fetch_job_polling_interval_s": opts.procrastinate_poll_s,
                          "listen_notify": True},
        "pgqueuer": {"batch_size": opts.shape.concurrency,
                     "driver": "asyncpg" if has_asyncpg() else "psycopg"},
    }  # fmt: skip
