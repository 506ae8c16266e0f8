"""The backlog, snapshot and crash benchmarks at a tiny size against real PostgreSQL,
Redis and Switchboard processes: each runs end to end, and its numbers agree with an
independent computation from the durable record."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import httpx
import psycopg
import pytest

from db.models import STORAGE_PARAMETERS
from dispatcher.bench import backlog, crash, snapshot, stats
from dispatcher.bench.env import BenchEnv
from dispatcher.bench.world import ENGINE, SIMULATOR, Shape, world


@pytest.fixture
def env(pg_server_url: str, redis_server_url: str, tmp_path: Path) -> BenchEnv:
    return BenchEnv(pg_server_url, redis_server_url, tmp_path)


def test_backlog_fills_each_size_and_reports_ratios(env: BenchEnv) -> None:
    shape = Shape(mode=ENGINE, worker_processes=1, worker_threads=4)
    out = backlog.run(env, shape, [1_000, 2_000], 50.0, 1.0, finished=800, overdue=300)
    for size in (1_000, 2_000):
        key = f"size{size}."
        assert out[key + "leads_rows"] == size + 800 + 300
        assert out[key + "call_attempts_rows"] == 800  # one ended attempt per finished lead
        assert out[key + "claim_claimed"] == backlog.PROBE_LEADS
        assert out[key + "complete"] == 1.0 and out[key + "placed"] == 50
        # The steady leads and the warm-up lead were added; the probe leads were removed.
        assert out[key + "after_leads_rows"] == size + 800 + 300 + 50 + 1
        # The paused reseller's overdue leads were never dialed.
        assert out[key + "after_call_attempts_rows"] == 800 + 50 + 1
    for metric in ("pickup_p99_ms", "claim_p50_ms"):
        want = out[f"size2000.{metric}"] / out[f"size1000.{metric}"]
        assert out[f"size2000.{metric}_ratio"] == pytest.approx(want)
        assert out[f"size1000.{metric}_ratio"] == 1.0


def test_snapshot_series_agree_with_call_attempts(env: BenchEnv) -> None:
    shape = Shape(mode=ENGINE, worker_processes=1, worker_threads=4)
    with world(env, shape, "t_snapshot") as w:
        r = snapshot.snapshot_run(
            w,
            rate=40.0,
            settle_s=2.0,
            baseline_s=4.0,
            hold_s=4.0,
            after_max_s=6.0,
            sample_s=1.0,
            tolerance=0.10,
            hold_windows=2,
        )
        with psycopg.connect(w.database_url) as conn:
            # Calls placed in each window, counted by SQL over the same boundaries.
            for win in r.windows:
                row = conn.execute(
                    "SELECT count(*) FROM call_attempts WHERE attempt_no = 1"
                    " AND placed_at > %(o)s + make_interval(secs => %(a)s)"
                    " AND placed_at <= %(o)s + make_interval(secs => %(b)s)"
                    " AND due_at >= %(o)s",
                    {"o": r.origin, "a": win.start, "b": win.end},
                ).fetchone()
                assert row is not None and row[0] == win.placed, win
            # The held phase's rate and its share of the baseline, recomputed.
            hold, release = r.marks["hold"], r.marks["release"]
            inside = [x for x in r.windows if x.start >= hold and x.end <= release]
            span = inside[-1].end - inside[0].start
            placed = conn.execute(
                "SELECT count(*) FROM call_attempts WHERE attempt_no = 1 AND due_at >= %(o)s"
                " AND placed_at > %(o)s + make_interval(secs => %(a)s)"
                " AND placed_at <= %(o)s + make_interval(secs => %(b)s)",
                {"o": r.origin, "a": inside[0].start, "b": inside[-1].end},
            ).fetchone()
            assert placed is not None
    m = r.metrics
    assert m["hold_s"] == pytest.approx(4.0, abs=1.5)
    assert m["held.placed_per_s"] == pytest.approx(placed[0] / span)
    assert m["held.throughput_pct_of_baseline"] == pytest.approx(
        100 * placed[0] / span / m["baseline.placed_per_s"]
    )
    # Nothing updated during the hold could be vacuumed: dead leads versions piled up.
    before = max(s.dead["leads"] for s in r.samples if s.t <= hold)
    held = [s.dead["leads"] for s in r.samples if hold < s.t <= release]
    assert held[-1] > before
    assert m["dead.leads.peak"] >= held[-1]
    path = snapshot.write_series(env.work_dir, r.windows, r.samples, r.marks, m)
    doc = json.loads(path.read_text())
    assert len(doc["windows"]) == len(r.windows) and doc["marks_s"] == r.marks


INDEPENDENT_DELAYS = """
    SELECT greatest(0, extract(epoch FROM least(
        (SELECT min(a.placed_at) FROM call_attempts a
         WHERE a.lead_id = k.lead_id AND a.placed_at IS NOT NULL
           AND (a.ended_at IS NULL OR a.ended_at >= k.at)),
        (SELECT a.ended_at FROM call_attempts a WHERE a.id = k.attempt_id)) - k.at))::float8
    FROM unnest(%s::timestamptz[], %s::bigint[], %s::uuid[]) AS k(at, lead_id, attempt_id)
"""


def test_crash_redispatch_and_duplicates_agree_with_sql_and_the_simulator(
    env: BenchEnv,
) -> None:
    shape = Shape(
        mode=SIMULATOR, schedulers=2, worker_processes=1, worker_threads=4, settings={"lease_s": 3}
    )
    with world(env, shape, "t_crash") as w:
        w.procs.start(crash.WORKER_SERVICES[1], "worker")
        r = crash.crash_run(
            w, leads=300, rate=100.0, kills=1, restart_delay_s=0.5, seed=3, settle_timeout_s=60
        )
        rows = crash.inflight_ids(r.kills)
        with psycopg.connect(w.database_url) as conn:
            sql = conn.execute(
                INDEPENDENT_DELAYS,
                ([x[0] for x in rows], [x[1] for x in rows], [x[2] for x in rows]),
            ).fetchall()
            attempts = conn.execute(
                "SELECT count(*) FROM call_attempts WHERE lead_id BETWEEN %s AND %s",
                (r.lo, r.hi),
            ).fetchone()
        sim = httpx.get(f"{w.settings.simulator_url}/sim/stats", timeout=10).json()
        alive = set(w.procs.procs)
    m = r.metrics
    assert len(r.kills) == 1 and r.kills[0].name in alive  # restarted
    assert m["inflight_at_kills"] == len(rows) > 0
    delays = [row[0] for row in sql if row[0] is not None]
    assert m["unresolved"] == len(rows) - len(delays) == 0
    assert m["redispatch_p50_s"] == pytest.approx(stats.percentile(delays, 50), abs=1e-5)
    assert m["redispatch_p99_s"] == pytest.approx(stats.percentile(delays, 99), abs=1e-5)
    assert m["redispatch_max_s"] == pytest.approx(max(delays), abs=1e-5)
    assert m["all_final"] == 1.0 and m["status.COMPLETED"] == 300
    assert m["overlapping_attempts"] == 0 == m["sim.duplicate_dials"] == sim["duplicate_dials"]
    assert m["leads_with_several_attempts"] == 0 and attempts is not None and attempts[0] == 300
    assert r.kills[0].at <= dt.datetime.now(dt.UTC)


def test_hot_tables_have_the_storage_parameters_of_the_models(env: BenchEnv) -> None:
    """Migration 0005 and db.models.STORAGE_PARAMETERS say the same."""
    with env.database("t_hot") as url, psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT relname, reloptions FROM pg_class WHERE relname = ANY(%s)",
            (list(STORAGE_PARAMETERS),),
        ).fetchall()
    got = {name: dict(o.split("=", 1) for o in options or []) for name, options in rows}
    assert got == STORAGE_PARAMETERS
