"""The arithmetic behind every benchmark number: a wrong formula must fail here."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from dispatcher.bench import stats
from dispatcher.bench.world import summarize
from dispatcher.lifecycle import Claimed
from dispatcher.scheduler import batches

T0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def ms(n: float) -> dt.timedelta:
    return dt.timedelta(milliseconds=n)


def test_nearest_rank_percentiles_are_observed_values() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert stats.percentile(values, 50) == 50
    assert stats.percentile(values, 95) == 95
    assert stats.percentile(values, 99) == 99
    assert stats.percentile(values, 100) == 100
    assert stats.percentile([7.0, 1.0, 3.0], 50) == 3.0  # order of input does not matter
    assert stats.percentile([5.0], 99) == 5.0
    # 10 values: p95 is the 10th (ceil(9.5)), never an interpolation such as 9.55
    assert stats.percentile([float(v) for v in range(1, 11)], 95) == 10


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        stats.percentile([], 50)
    with pytest.raises(ValueError):
        stats.percentile([1.0], 0)


def test_pickup_is_placed_minus_due_in_ms() -> None:
    pairs = [(T0, T0 + ms(12)), (T0 + ms(5), T0 + ms(5)), (T0 + ms(100), T0 + ms(90))]
    assert stats.pickup_ms(pairs) == [12.0, 0.0, -10.0]  # early shows as negative


def test_span_rate_counts_from_first_due_to_last_placed() -> None:
    starts = [T0, T0 + ms(500)]
    ends = [T0 + ms(1000), T0 + ms(2000)]
    assert stats.span_rate(starts, ends) == 1.0  # 2 items over 2 s
    assert stats.span_rate([], []) == 0.0
    assert stats.rate(10, 0) == 0.0


def test_aggregate_gives_median_min_max_per_metric() -> None:
    runs = [{"a": 3.0, "b": 1.0}, {"a": 1.0}, {"a": 2.0, "b": 5.0}]
    agg = stats.aggregate(runs)
    assert agg["a"] == {"median": 2.0, "min": 1.0, "max": 3.0, "runs": 3}
    assert agg["b"] == {"median": 3.0, "min": 1.0, "max": 5.0, "runs": 2}
    assert stats.ratio(10.0, 4.0) == 2.5
    assert stats.ratio(1.0, 0.0) is None


def test_summarize_reports_latency_and_throughput() -> None:
    # 100 leads due every 10 ms, each placed 5 ms after its due time except the last
    # (placed 50 ms late): p99 is 5, max 50, throughput 100 / (0.99 s + 0.05 s).
    pairs = [(T0 + ms(10 * i), T0 + ms(10 * i + 5)) for i in range(99)]
    pairs.append((T0 + ms(990), T0 + ms(1040)))
    out = summarize(pairs, offered=100, complete=True)
    assert out["placed"] == 100
    assert out["pickup_p50_ms"] == 5.0
    assert out["pickup_p99_ms"] == 5.0
    assert out["pickup_max_ms"] == 50.0
    assert out["placed_per_s"] == pytest.approx(100 / 1.04)
    assert summarize([], offered=3, complete=False) == {"offered": 3, "placed": 0, "complete": 0.0}


def claims(n: int) -> list[Claimed]:
    return [Claimed(i, 1, T0) for i in range(n)]


def test_claims_are_spread_over_worker_slots_in_bounded_batches() -> None:
    assert batches([], 16, 20) == []
    # Few leads: one per message, so every worker thread gets one.
    assert [len(b) for b in batches(claims(5), 16, 20)] == [1] * 5
    # Many: spread over 16 slots, capped at 20 per message, nothing lost or repeated.
    split = batches(claims(500), 16, 20)
    assert max(len(b) for b in split) == 20
    assert [c.lead_id for b in split for c in b] == list(range(500))
    assert [len(b) for b in batches(claims(64), 16, 20)] == [4] * 16


def test_shadow_cost_is_throughput_lost_and_latency_added() -> None:
    from dispatcher.bench.e2e import cost_pct

    off = {"steady100.placed_per_s": 100.0, "steady100.pickup_p99_ms": 20.0, "x.offered": 5.0}
    on = {"steady100.placed_per_s": 95.0, "steady100.pickup_p99_ms": 21.0, "x.offered": 5.0}
    assert cost_pct(off, on) == {
        "shadow_cost_pct.steady100.placed_per_s": pytest.approx(5.0),
        "shadow_cost_pct.steady100.pickup_p99_ms": pytest.approx(5.0),
    }


def test_results_are_recorded_and_summarised_from_the_newest_file(tmp_path: Path) -> None:
    import json

    from dispatcher.bench import results, summary

    host = {"cores": 2, "memory_gib": 24.0, "python": "3.11", "postgresql": "15", "redis": "7"}
    old = tmp_path / "e2e-engine-20260101T000000.json"
    old.write_text(json.dumps({"scenario": "e2e-engine", "runs": [], "summary": {}}))
    path = results.record(
        "e2e-engine",
        [{"x.placed_per_s": 300.0}, {"x.placed_per_s": 100.0}, {"x.placed_per_s": 200.0}],
        {"rates": [100]},
        host | {"commit": "abc1234"},
        out_dir=tmp_path,
    )
    doc = json.loads(path.read_text())
    assert doc["summary"]["x.placed_per_s"] == {
        "median": 200.0,
        "min": 100.0,
        "max": 300.0,
        "runs": 3,
    }
    text = summary.render(tmp_path)
    assert "| x.placed_per_s | 200 | 100 | 300 |" in text
    assert "2 cores, 24.0 GiB" in text and "commit abc1234" in text
