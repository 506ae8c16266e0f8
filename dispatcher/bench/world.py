"""One running Switchboard for a benchmark: a fresh database with numbers, and its
processes (schedulers, workers; in simulator mode also the API and the simulator).

Scenarios load leads with due times in the future and read what happened from
`call_attempts`: the system is measured by its own durable record, not by timers in
the benchmark.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from dispatcher import lifecycle
from dispatcher.bench import stats
from dispatcher.bench.env import BENCH_TEMPLATE, BenchEnv, Procs, wait_until
from dispatcher.lifecycle import NewLead
from dispatcher.settings import Settings
from dispatcher.tokens import issue_token

ENGINE, SIMULATOR = "engine", "simulator"
MODES = (ENGINE, SIMULATOR)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Shape:
    """How big the system under test is."""

    mode: str = ENGINE
    schedulers: int = 1
    worker_processes: int = 1
    worker_threads: int = 8
    numbers: int = 10
    channels: int = 200  # per number: channels never bound the engine benchmark
    resellers: int = 1
    shadow: bool = False  # the shadow ZSET schedule on for every reseller (issue #5's cost)
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class World:
    env: BenchEnv
    shape: Shape
    database_url: str
    settings: Settings
    procs: Procs
    _reseller_cycle: int = 0

    def connect(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self.database_url, autocommit=True, row_factory=dict_row)

    def start_schedulers(self) -> None:
        for i in range(self.shape.schedulers):
            self.procs.start(f"scheduler{i}", "scheduler")

    def start_workers(self) -> None:
        self.procs.start("worker", "worker")

    def load(self, due: Sequence[dt.datetime], phone_offset: int = 0) -> tuple[int, int]:
        """Insert one lead per due time through the lifecycle; (first id, last id)."""
        ids: list[int] = []
        with psycopg.connect(self.database_url, row_factory=dict_row) as conn:
            for start in range(0, len(due), 5000):
                chunk = due[start : start + 5000]
                batch = [
                    NewLead(
                        reseller_id=f"r{(start + i) % self.shape.resellers}",
                        phone=f"+1202555{(phone_offset + start + i) % 10_000:04d}",
                        template=BENCH_TEMPLATE,
                        next_attempt_at=at,
                    )
                    for i, at in enumerate(chunk)
                ]
                with conn.transaction():
                    ids += [i for i in lifecycle.create_leads(conn, batch) if i is not None]
        return min(ids), max(ids)

    def db_now(self) -> dt.datetime:
        with self.connect() as conn:
            row = conn.execute("SELECT now() AS t").fetchone()
            assert row is not None
            return row["t"]

    def placed(self, lo: int, hi: int) -> int:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT count(*) AS n FROM call_attempts"
                " WHERE lead_id BETWEEN %s AND %s AND placed_at IS NOT NULL",
                (lo, hi),
            ).fetchone()
            return int(row["n"]) if row else 0

    def wait_placed(self, lo: int, hi: int, timeout_s: float) -> bool:
        """True when every lead in [lo, hi] has a placed call."""
        want = hi - lo + 1

        def done() -> bool:
            self.procs.check_alive()
            return self.placed(lo, hi) >= want

        return wait_until(done, timeout_s, interval_s=0.25)

    def pickups(self, lo: int, hi: int) -> list[tuple[dt.datetime, dt.datetime]]:
        """(due, placed) of each lead's first call."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT due_at, placed_at FROM call_attempts WHERE lead_id BETWEEN %s AND %s"
                " AND attempt_no = 1 AND placed_at IS NOT NULL",
                (lo, hi),
            ).fetchall()
        return [(r["due_at"], r["placed_at"]) for r in rows]

    def steady(self, rate_per_s: float, seconds: float, lead_s: float = 2.0) -> dict[str, float]:
        """Offer `rate_per_s` due leads per second for `seconds` (due times spaced evenly,
        loaded ahead of time); pickup latency and achieved throughput."""
        n = max(int(rate_per_s * seconds), 1)
        start = self.db_now() + dt.timedelta(seconds=lead_s + n / 20_000)
        due = [start + dt.timedelta(seconds=i / rate_per_s) for i in range(n)]
        lo, hi = self.load(due, phone_offset=self._next_phones(n))
        complete = self.wait_placed(lo, hi, timeout_s=seconds + lead_s + 120)
        return summarize(self.pickups(lo, hi), offered=n, complete=complete)

    def burst(self, n: int, lead_s: float = 2.0) -> dict[str, float]:
        """`n` leads all due at one instant: burn-down throughput (the most it sustains)."""
        at = self.db_now() + dt.timedelta(seconds=lead_s + n / 20_000)
        lo, hi = self.load([at] * n, phone_offset=self._next_phones(n))
        complete = self.wait_placed(lo, hi, timeout_s=lead_s + 300)
        return summarize(self.pickups(lo, hi), offered=n, complete=complete)

    def _next_phones(self, n: int) -> int:
        self._reseller_cycle += n
        return self._reseller_cycle - n


def summarize(
    pairs: Sequence[tuple[dt.datetime, dt.datetime]], offered: int, complete: bool
) -> dict[str, float]:
    """Pickup latency (placed - due) and throughput (placed / (last placed - first due))."""
    out: dict[str, float] = {"offered": offered, "placed": len(pairs), "complete": float(complete)}
    if not pairs:
        return out
    latency = stats.latency_summary(stats.pickup_ms(pairs))
    out.update({f"pickup_{k}_ms": v for k, v in latency.items() if k != "count"})
    out["placed_per_s"] = stats.span_rate([d for d, _ in pairs], [p for _, p in pairs])
    return out


@contextlib.contextmanager
def world(env: BenchEnv, shape: Shape, name: str) -> Iterator[World]:
    """A database, numbers and the processes of `shape`, ready for leads."""
    with env.database(name) as url:
        overrides: dict[str, Any] = {
            "worker_processes": shape.worker_processes,
            "worker_threads": shape.worker_threads,
            "db_pool_size": max(shape.worker_threads + 2, 10),
            **shape.settings,
        }
        if shape.mode == ENGINE:
            overrides["instant_provider"] = True
        else:
            overrides.update(api_port=free_port(), sim_port=free_port())
        settings = env.settings(url, **overrides)
        provider = "instant" if shape.mode == ENGINE else "simulator"
        with psycopg.connect(url, autocommit=True) as conn:
            for i in range(shape.numbers):
                conn.execute(
                    "INSERT INTO outbound_numbers (e164, provider, max_channels)"
                    " VALUES (%s, %s, %s)",
                    (f"+1415555{i:04d}", provider, shape.channels),
                )
            if shape.shadow:
                conn.execute("INSERT INTO shadow_flags (scope, enabled) VALUES ('*', true)")
        procs = Procs(settings, env.work_dir / "logs" / name)
        w = World(env, shape, url, settings, procs)
        try:
            if shape.mode == SIMULATOR:
                procs.start("simulator", "simulator")
                procs.start("api", "api")
                _wait_http(f"{settings.callback_base_url}/health", procs)
                _wait_http(f"{settings.simulator_url}/sim/stats", procs)
                with httpx.Client(base_url=settings.simulator_url) as sim:
                    sim.put(
                        "/sim/config",
                        json={
                            "ring_ms": [5, 10],
                            "talk_ms": [5, 10],
                            "distribution": {"answered": 1.0},
                        },
                    ).raise_for_status()
            w.start_schedulers()
            w.start_workers()
            warm = w.burst(1, lead_s=0.0)  # the first call proves every process is up
            if not warm.get("complete"):
                raise RuntimeError("the system placed no call within the warm-up")
            yield w
        finally:
            procs.stop_all()
            env.forget_redis(settings)


def _wait_http(url: str, procs: Procs, timeout_s: float = 60) -> None:
    def ok() -> bool:
        procs.check_alive()
        try:
            return httpx.get(url, timeout=2).status_code < 500 or "health" in url
        except httpx.HTTPError:
            return False

    if not wait_until(ok, timeout_s, interval_s=0.2):
        raise RuntimeError(f"{url} did not answer")


def admin_token(settings: Settings) -> str:
    return issue_token(settings.jwt_secret, role="admin")
