"""`bench compare` at a tiny size on the test servers: every contender, in its real
processes, starts every item exactly once, its own system ends every item, and the
reported figures are the ones its `bench_started` rows give.

The contenders run side by side (each has its own database and Redis prefix) to keep
the test short; the command runs them one after another.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatcher.bench import compare, stats
from dispatcher.bench.env import BenchEnv
from dispatcher.bench.peers.base import Contender, Shape
from dispatcher.bench.peers.zset_design import Intervals, ZsetDesign

SIZES = compare.Sizes(
    items=200, rate=50, seconds=2, scheduled=40, ahead_s=1.0, scheduled_rate=40, lead_s=1.0
)
OPTS = compare.Options(
    shape=Shape(processes=1, concurrency=4),
    sizes=SIZES,
    core_batch=7,  # batches that do not divide the items evenly
    cron_tick_s=1.0,
    cron_window_s=None,  # to the end: every item must be done
    procrastinate_poll_s=0.5,
    zset_promote_ms=100,
    zset_intervals=Intervals(1.0, 1.0, 1.0, 1.0),  # every reconciler runs during the test
)
PHASES = {"warm": 1, "burndown": SIZES.items, "steady": 100, "scheduled": SIZES.scheduled}
TOTAL = sum(PHASES.values())

# Each system's own record of its items, in its own database: (all, not finished). PgQueuer
# deletes a job when it completes, so its queue table must simply be empty.
DONE_SQL = {
    "core": "SELECT count(*), count(*) FILTER (WHERE status <> 'SKIPPED') FROM leads",
    "cron": "SELECT count(*), count(*) FILTER (WHERE status <> 'DONE') FROM cron_leads",
    "zset": "SELECT count(*), count(*) FILTER (WHERE status <> 'DONE') FROM zs_leads",
    "procrastinate": "SELECT count(*), count(*) FILTER (WHERE status <> 'succeeded')"
    " FROM procrastinate_jobs",
    "pgqueuer": "SELECT %(total)s, count(*) FROM pgqueuer",
}


def _check(name: str, c: Contender, result: Mapping[str, float]) -> dict[str, Any]:
    """What the contender's database says, read before it is dropped."""
    conn = c.conn
    found: dict[str, Any] = {
        "items": conn.execute("SELECT phase, count(*) FROM bench_items GROUP BY phase").fetchall(),
        "started": conn.execute(
            "SELECT count(*), count(DISTINCT item) FROM bench_started"
        ).fetchone(),
        "unstarted": conn.execute(
            "SELECT count(*) FROM bench_items i WHERE NOT EXISTS"
            " (SELECT 1 FROM bench_started s WHERE s.item = i.item)"
        ).fetchone(),
        "strangers": conn.execute(
            "SELECT count(*) FROM bench_started s WHERE NOT EXISTS"
            " (SELECT 1 FROM bench_items i WHERE i.item = s.item)"
        ).fetchone(),
        "result": dict(result),
    }
    # The figures again, from the rows, by the shared arithmetic.
    for phase, prefix in (("steady", "pickup"), ("scheduled", "lateness")):
        pairs = conn.execute(
            "SELECT i.due_at, s.started_at FROM bench_items i JOIN bench_started s USING (item)"
            " WHERE i.phase = %s",
            (phase,),
        ).fetchall()
        found[prefix] = stats.latency_summary(stats.pickup_ms(pairs))
    row = conn.execute(
        "SELECT min(i.due_at), max(s.started_at) FROM bench_items i"
        " JOIN bench_started s USING (item) WHERE i.phase = 'burndown'"
    ).fetchone()
    assert row is not None
    found["burndown_s"] = (row[1] - row[0]).total_seconds()
    # A job's completion is booked after its start is recorded (PgQueuer deletes finished
    # jobs in batches): give the last ones a moment before counting what is not done.
    deadline = time.monotonic() + 10
    while True:
        found["done"] = conn.execute(DONE_SQL[name], {"total": TOTAL}).fetchone()
        if found["done"][1] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if isinstance(c, ZsetDesign):  # nothing left behind in Redis
        keys = c.keys
        found["zset_left"] = (
            c.client.zcard(keys.schedule)
            + sum(int(c.client.llen(k)) for k in keys.ready_all)
            + sum(int(c.client.llen(k)) for k in c.client.scan_iter(match=keys.processing_pattern))
        )
    return found


class SideBySideEnv(BenchEnv):
    """Creates the databases one at a time: Alembic's upgrade is not thread-safe."""

    _lock = threading.Lock()

    @contextlib.contextmanager
    def database(self, name: str) -> Iterator[str]:
        with contextlib.ExitStack() as stack:
            with self._lock:
                url = stack.enter_context(super().database(name))
            yield url


@pytest.fixture(scope="module")
def outcome(pg_server_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    env = SideBySideEnv(pg_server_url, redis_url, tmp_path_factory.mktemp("compare"))
    checks: dict[str, dict[str, Any]] = {}

    def inspect(name: str, c: Contender, result: Mapping[str, float]) -> None:
        checks[name] = _check(name, c, result)

    with ThreadPoolExecutor(len(compare.CONTENDERS)) as pool:
        futures = {
            name: pool.submit(compare.run_one, env, name, OPTS, inspect)
            for name in compare.CONTENDERS
        }
        results = {name: f.result() for name, f in futures.items()}
    leftover = redis.Redis.from_url(redis_url)
    try:
        left_keys = [k for k in leftover.scan_iter(match="bench-*")]
    finally:
        leftover.close()
    return compare.merge(results), checks, left_keys


@pytest.mark.parametrize("name", compare.CONTENDERS)
def test_every_item_starts_exactly_once(outcome: Any, name: str) -> None:
    flat, checks, _ = outcome
    check = checks[name]
    assert dict(check["items"]) == PHASES
    assert check["started"] == (TOTAL, TOTAL)  # no duplicates
    assert check["unstarted"] == (0,)
    assert check["strangers"] == (0,)
    assert check["done"] == (TOTAL, 0)
    assert flat[f"{name}.duplicates"] == 0
    for phase in ("burndown", "pickup", "lateness"):
        assert flat[f"{name}.{phase}_complete"] == 1.0
    if name == "zset":
        assert check["zset_left"] == 0


@pytest.mark.parametrize("name", compare.CONTENDERS)
def test_reported_figures_are_the_recorded_ones(outcome: Any, name: str) -> None:
    flat, checks, _ = outcome
    check = checks[name]
    for prefix in ("pickup", "lateness"):
        for key in ("p50", "p95", "p99", "max"):
            assert flat[f"{name}.{prefix}_{key}_ms"] == pytest.approx(check[prefix][key])
        assert check[prefix]["count"] == flat[f"{name}.{prefix}_offered"]
    assert flat[f"{name}.burndown_s"] == pytest.approx(check["burndown_s"])
    assert flat[f"{name}.burndown_per_s"] == pytest.approx(SIZES.items / check["burndown_s"])
    # Nothing started before it was due (a scheduling bug would show up as negative).
    assert check["pickup"]["p50"] >= 0 and check["lateness"]["p50"] >= 0


def test_ratios_and_cleanup(outcome: Any) -> None:
    flat, _, left_keys = outcome
    for peer in compare.PEERS:
        assert flat[f"ratio.core_vs_{peer}.burndown"] == pytest.approx(
            flat["core.burndown_per_s"] / flat[f"{peer}.burndown_per_s"]
        )
        assert flat[f"ratio.core_vs_{peer}.lateness_p99"] == pytest.approx(
            flat["core.lateness_p99_ms"] / flat[f"{peer}.lateness_p99_ms"]
        )
    assert left_keys == []  # every run's Redis prefix was forgotten


def test_work_dir_has_the_logs(outcome: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    base = Path(tmp_path_factory.getbasetemp())
    logs = {p.parent.name for p in base.glob("compare*/logs/compare/*/*.log")}
    assert logs == set(compare.CONTENDERS)
