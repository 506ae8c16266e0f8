"""The arithmetic of `bench compare`: throughput, extrapolation, latency keys, ratios,
batching, cron ticks and clock conversions."""

from __future__ import annotations

import datetime as dt

import pytest

from dispatcher.bench import compare
from dispatcher.bench.peers.base import to_datetime
from dispatcher.bench.peers.core import chunks
from dispatcher.bench.peers.cron import next_tick
from dispatcher.bench.peers.pgqueuer_peer import delays
from dispatcher.bench.peers.zset_design import due_ms

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_burndown_runs_to_the_last_start() -> None:
    out = compare.burndown_figures(T0, [at(0.5), at(1.0), at(2.0), at(4.0)], 4, None)
    assert out["burndown_per_s"] == pytest.approx(1.0)  # 4 items in 4 s after the commit
    assert out["burndown_s"] == pytest.approx(4.0)
    assert out["burndown_complete"] == 1.0
    assert out["burndown_extrapolated"] == 0.0


def test_burndown_incomplete_says_so() -> None:
    out = compare.burndown_figures(T0, [at(1.0)], 3, None)
    assert out["burndown_complete"] == 0.0
    assert out["burndown_items"] == 1


def test_burndown_over_a_window_extrapolates_and_ignores_later_starts() -> None:
    starts = [at(1), at(2), at(30), at(31), at(61)]  # the last one is past the 60 s window
    out = compare.burndown_figures(T0, starts, 1000, 60.0)
    assert out["burndown_items"] == 4
    assert out["burndown_per_s"] == pytest.approx(4 / 60)
    assert out["burndown_s"] == pytest.approx(1000 / (4 / 60))
    assert out["burndown_extrapolated"] == 1.0
    assert out["burndown_complete"] == 0.0


def test_burndown_window_with_nothing_done_has_no_duration() -> None:
    out = compare.burndown_figures(T0, [], 10, 60.0)
    assert out["burndown_per_s"] == 0.0
    assert "burndown_s" not in out


def test_first_run_rate_stops_at_the_first_gap() -> None:
    starts = [at(0.0), at(0.1), at(0.2), at(0.3), at(30.0), at(30.1)]
    assert compare.first_run_rate(starts, gap_s=1.0) == pytest.approx(3 / 0.3)
    assert compare.first_run_rate([at(0)], gap_s=1.0) is None


def test_latency_figures_are_start_minus_due_in_ms() -> None:
    pairs = [(at(0), at(0.010)), (at(1), at(1.030)), (at(2), at(2.020))]
    out = compare.latency_figures("pickup", pairs)
    assert out == {
        "pickup_p50_ms": pytest.approx(20.0),
        "pickup_p95_ms": pytest.approx(30.0),
        "pickup_p99_ms": pytest.approx(30.0),
        "pickup_max_ms": pytest.approx(30.0),
    }


def test_ratios_are_core_over_peer_and_skip_missing_or_zero() -> None:
    out = {
        "core.burndown_per_s": 6000.0,
        "procrastinate.burndown_per_s": 600.0,
        "core.lateness_p99_ms": 50.0,
        "procrastinate.lateness_p99_ms": 5000.0,
        "cron.burndown_per_s": 0.0,
    }
    assert compare.ratios(out) == {
        "ratio.core_vs_procrastinate.burndown": pytest.approx(10.0),
        "ratio.core_vs_procrastinate.lateness_p99": pytest.approx(0.01),
    }


def test_chunks_cover_every_item_once_in_order() -> None:
    parts = chunks(list(range(120)), 50)
    assert [len(p) for p in parts] == [50, 50, 20]
    assert [x for p in parts for x in p] == list(range(120))
    assert chunks([], 50) == []
    with pytest.raises(ValueError):
        chunks([1], 0)


def test_cron_ticks_on_wall_clock_multiples() -> None:
    assert next_tick(61.0, 30.0) == 90.0
    assert next_tick(60.0, 30.0) == 90.0  # strictly after: a tick does not fire twice
    assert next_tick(0.2, 1.0) == 1.0


def test_zset_scores_move_from_the_database_clock_to_the_local_one() -> None:
    due = at(10)
    assert due_ms(due, 0.0) == int(due.timestamp() * 1000)
    assert due_ms(due, 0.25) == int(due.timestamp() * 1000) - 250  # database 250 ms ahead


def test_pgqueuer_delays_are_relative_to_the_statement_now() -> None:
    assert delays([at(5), None, at(4.5)], at(2)) == [
        dt.timedelta(seconds=3),
        None,
        dt.timedelta(seconds=2.5),
    ]


def test_to_datetime_is_utc() -> None:
    assert to_datetime(T0.timestamp() + 1.5) == at(1.5)
