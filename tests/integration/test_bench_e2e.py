"""`switchboard bench e2e` at a tiny size: real scheduler and worker processes (and in
simulator mode the API and the simulator), and numbers that match the database."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from dispatcher.bench import e2e
from dispatcher.bench.env import BenchEnv
from dispatcher.bench.world import ENGINE, SIMULATOR, Shape, summarize, world

SMALL = {"numbers": 2, "channels": 10, "worker_processes": 1, "worker_threads": 4}


@pytest.fixture()
def env(pg_server_url: str, redis_server_url: str, tmp_path: Path) -> BenchEnv:
    with BenchEnv.open(pg_server_url, redis_server_url, tmp_path) as opened:
        yield opened  # type: ignore[misc]


def test_pickup_latency_equals_the_databases_own_percentiles(env: BenchEnv) -> None:
    with world(env, Shape(**SMALL), "latency") as w:
        start = w.db_now() + dt.timedelta(seconds=1)
        lo, hi = w.load([start + dt.timedelta(milliseconds=20 * i) for i in range(60)])
        assert w.wait_placed(lo, hi, timeout_s=60)
        out = summarize(w.pickups(lo, hi), offered=60, complete=True)
        with w.connect() as conn:
            sql = conn.execute(
                """
                SELECT count(*) AS n,
                       percentile_disc(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
                       percentile_disc(0.99) WITHIN GROUP (ORDER BY ms) AS p99,
                       max(ms) AS max, min(due_at) AS first_due, max(placed_at) AS last
                FROM (SELECT due_at, placed_at,
                             extract(epoch FROM placed_at - due_at) * 1000 AS ms
                      FROM call_attempts WHERE lead_id BETWEEN %s AND %s) a
                """,
                (lo, hi),
            ).fetchone()
            statuses = conn.execute(
                "SELECT DISTINCT status FROM leads WHERE id BETWEEN %s AND %s", (lo, hi)
            ).fetchall()
    assert sql is not None
    assert out["placed"] == sql["n"] == 60
    assert out["pickup_p50_ms"] == pytest.approx(float(sql["p50"]), abs=0.01)
    assert out["pickup_p99_ms"] == pytest.approx(float(sql["p99"]), abs=0.01)
    assert out["pickup_max_ms"] == pytest.approx(float(sql["max"]), abs=0.01)
    span = (sql["last"] - sql["first_due"]).total_seconds()
    assert out["placed_per_s"] == pytest.approx(60 / span)
    assert out["pickup_p50_ms"] >= 0  # nothing dialed before it was due
    # Engine mode ends every call at once through the lifecycle: all completed.
    assert [r["status"] for r in statuses] == ["COMPLETED"]


@pytest.mark.parametrize("mode", [ENGINE, SIMULATOR])
def test_the_scenario_runs_in_both_modes(env: BenchEnv, mode: str) -> None:
    out = e2e.run(env, Shape(mode=mode, **SMALL), rates=[20.0], seconds=1.0, burst=15)
    assert out["steady20.offered"] == 20 and out["steady20.placed"] == 20
    assert out["steady20.complete"] == 1.0
    assert out["burst15.placed"] == 15 and out["burst15.complete"] == 1.0
    assert out["burst15.placed_per_s"] > 0
    assert out["steady20.pickup_p99_ms"] <= out["steady20.pickup_max_ms"]
