"""The arithmetic of the backlog, snapshot and crash benchmarks on synthetic data, where
the right answer is known by construction."""

from __future__ import annotations

import datetime as dt
import itertools
import random
import uuid

import pytest

from dispatcher.bench import backlog, crash, snapshot
from dispatcher.bench.crash import Attempt, InFlight, Kill
from dispatcher.bench.snapshot import Baseline, Window

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def at(s: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=s)


# --- snapshot ---------------------------------------------------------------------------


def test_windows_count_calls_between_samples_and_take_the_p99() -> None:
    samples = [(0.0, 10.0), (5.0, 20.0), (10.0, 30.0)]
    # 100 calls in (0, 5] with latencies 1..100 ms, 3 in (5, 10], 1 exactly at 0 (before).
    placed = [(0.0, 999.0)] + [(0.01 * i, float(i)) for i in range(1, 101)]
    placed += [(5.0 + 1, 7.0), (10.0, 8.0), (9.0, 9.0)]
    ws = snapshot.windows(samples, placed)
    assert [(w.start, w.end, w.placed) for w in ws] == [(0.0, 5.0, 100), (5.0, 10.0, 3)]
    assert ws[0].p99_ms == 99.0  # nearest rank: the 99th of 100 sorted values
    assert ws[0].placed_per_s == 20.0
    assert ws[1].p99_ms == 9.0
    assert [w.dead for w in ws] == [20.0, 30.0]  # the dead tuples at each window's end


def test_windows_without_calls_have_no_p99() -> None:
    ws = snapshot.windows([(0.0, 0.0), (1.0, 0.0)], [])
    assert ws == [Window(0.0, 1.0, 0, None, 0.0)]


def _series() -> list[Window]:
    """Windows of 5 s: baseline 100/s, p99 20 ms, ~1000 dead; held from t=30 to t=60
    (throughput falls, p99 and dead tuples rise); after release throughput and p99
    recover at once, but dead tuples stay high until vacuum at t=80 brings them down."""
    rows: list[tuple[float, float, float]] = []  # (per s, p99, dead)
    rows += [(100, 20, 1000)] * 6  # t 0..30
    rows += [(95, 30, 5000), (90, 40, 10_000), (85, 50, 15_000)]  # t 30..45
    rows += [(80, 60, 20_000), (75, 70, 25_000), (70, 80, 30_000)]  # t 45..60
    rows += [(100, 21, 31_000), (101, 20, 32_000), (99, 19, 33_000), (100, 20, 33_000)]  # 60..80
    rows += [(100, 20, 2_000), (100, 21, 1_000), (100, 20, 900), (100, 20, 950)]  # 80..100
    return [
        Window(5.0 * i, 5.0 * (i + 1), int(rate * 5), p99, dead)
        for i, (rate, p99, dead) in enumerate(rows)
    ]


def test_baseline_is_the_median_of_its_windows_and_the_most_dead_tuples() -> None:
    ws = _series()
    base = snapshot.baseline(ws, 5.0, 30.0)  # skips the first window
    assert base == Baseline(100.0, 20.0, 1000.0)
    with pytest.raises(ValueError):
        snapshot.baseline(ws, 200.0, 300.0)


def test_back_to_baseline_waits_for_dead_tuples_to_fall() -> None:
    ws = _series()
    base = snapshot.baseline(ws, 5.0, 30.0)
    # Throughput and p99 are back in the window ending at 65, but dead tuples rise until
    # 80; the window (80, 85] is the first where they fall (a vacuum ran), and it and
    # the next two are at baseline: back at 85, 25 s after the release at 60.
    assert snapshot.back_to_baseline_s(ws, 60.0, base, tol=0.10, hold=3) == 25.0
    assert not snapshot.at_baseline(ws[15], base, 0.10, cleared=False)
    assert snapshot.at_baseline(ws[16], base, 0.10, cleared=True)
    # After the fall, dead tuples may rise again (the next sawtooth): still back.
    rising = [
        *ws[:17],
        *(Window(w.start, w.end, w.placed, w.p99_ms, 5_000.0 + w.start) for w in ws[17:]),
    ]
    assert snapshot.back_to_baseline_s(rising, 60.0, base, tol=0.10, hold=3) == 25.0
    # Dead tuples that never fall after the release (no vacuum): never back.
    flat = [
        *ws[:12],
        *(Window(w.start, w.end, w.placed, w.p99_ms, 40_000.0 + w.start) for w in ws[12:]),
    ]
    assert snapshot.back_to_baseline_s(flat, 60.0, base, tol=0.10, hold=3) is None
    # A fall before the release does not count; one after it does.
    dead = [1000.0, 500.0, 600.0, 700.0, 800.0, 900.0]
    before = [Window(5.0 * i, 5.0 * (i + 1), 500, 20.0, d) for i, d in enumerate(dead)]
    assert snapshot.back_to_baseline_s(before, 10.0, base) is None
    dead = [1000.0, 1100.0, 1200.0, 600.0, 700.0, 800.0]
    after = [Window(5.0 * i, 5.0 * (i + 1), 500, 20.0, d) for i, d in enumerate(dead)]
    assert snapshot.back_to_baseline_s(after, 10.0, base) == 10.0


def test_back_to_baseline_needs_the_whole_run_of_windows() -> None:
    ws = _series()
    base = snapshot.baseline(ws, 5.0, 30.0)
    # Only 4 windows after the fall: 5 in a row never happened.
    assert snapshot.back_to_baseline_s(ws, 60.0, base, tol=0.10, hold=5) is None
    # p99 11 % over the baseline is out of a 10 % tolerance and within a 20 % one.
    w = Window(0, 5, 500, 22.2, 900)
    assert not snapshot.at_baseline(w, base, 0.10, cleared=True)
    assert snapshot.at_baseline(w, base, 0.20, cleared=True)
    # Throughput 11 % under the baseline likewise.
    w = Window(0, 5, 445, 20.0, 900)
    assert not snapshot.at_baseline(w, base, 0.10, cleared=True)
    assert snapshot.at_baseline(w, base, 0.20, cleared=True)


def test_phase_summary_rates_over_the_phase() -> None:
    ws = _series()
    held = snapshot.phase_summary(ws, 30.0, 60.0)
    # (95 + 90 + 85 + 80 + 75 + 70) * 5 calls over 30 s.
    assert held["placed_per_s"] == pytest.approx(82.5)
    assert held["min_window_placed_per_s"] == 70.0
    assert held["p99_max_ms"] == 80.0
    assert held["dead_max"] == 30_000.0
    assert 100 * held["placed_per_s"] / snapshot.baseline(ws, 5.0, 30.0).placed_per_s == 82.5


# --- crash ------------------------------------------------------------------------------


def _attempt(lead: int, placed: float | None, ended: float | None) -> Attempt:
    return Attempt(
        uuid.uuid4(),
        lead,
        None if placed is None else at(placed),
        None if ended is None else at(ended),
    )


def test_resolution_of_a_queued_lead_is_its_next_placed_call() -> None:
    kill = Kill("scheduler0", at(100), ())
    old = _attempt(1, 10, 20)  # history: ended before the kill
    new = _attempt(1, 131.5, 140)
    lead = InFlight(1, "QUEUED", None)
    assert crash.resolution_s(kill, lead, [old, new]) == 31.5
    assert crash.resolution_s(kill, lead, [old]) is None


def test_resolution_of_a_dialing_lead_is_its_attempt_placed_or_ended() -> None:
    kill = Kill("worker", at(100), ())
    never_placed = _attempt(2, None, 106.25)  # ended by the reconciler
    lead = InFlight(2, "DIALING", never_placed.id)
    assert crash.resolution_s(kill, lead, [never_placed]) == 6.25
    # Placed in a transaction that began 5 ms before the recorded kill time: 0, not lost.
    racing = _attempt(3, 99.995, 110)
    assert crash.resolution_s(kill, InFlight(3, "DIALING", racing.id), [racing]) == 0.0
    # Placed after the kill by the surviving worker, before it ended.
    placed = _attempt(4, 100.75, 105)
    assert crash.resolution_s(kill, InFlight(4, "DIALING", placed.id), [placed]) == 0.75


def test_redispatch_delays_over_kills() -> None:
    a = _attempt(1, 132, 140)
    b = _attempt(2, None, 106)
    kills = [
        Kill("scheduler0", at(100), (InFlight(1, "QUEUED", None), InFlight(3, "QUEUED", None))),
        Kill("worker", at(100), (InFlight(2, "DIALING", b.id),)),
    ]
    delays, unresolved = crash.redispatch_delays(kills, {1: [a], 2: [b]})
    assert delays == [32.0, 6.0]
    assert unresolved == 1


def test_kill_plan_spreads_kills_apart_within_the_span() -> None:
    for seed in range(50):
        plan = crash.kill_plan(random.Random(seed), 6, 100.0, 3.0)
        assert len(plan) == 6 and plan == sorted(plan)
        assert plan[0] >= 3.0 and plan[-1] <= 100.0
        assert all(b - a >= 3.0 for a, b in itertools.pairwise(plan))
    assert crash.kill_plan(random.Random(1), 0, 10.0, 3.0) == []
    with pytest.raises(ValueError):
        crash.kill_plan(random.Random(1), 5, 10.0, 3.0)


# --- backlog ----------------------------------------------------------------------------


def test_ratios_are_to_the_smallest_size() -> None:
    out = backlog.with_ratios(
        {
            10_000: {"pickup_p99_ms": 40.0, "claim_p50_ms": 2.0, "fill_total_s": 1.0},
            1_000_000: {"pickup_p99_ms": 46.0, "claim_p50_ms": 5.0, "fill_total_s": 9.0},
        },
        10_000,
    )
    assert out["size1000000.pickup_p99_ms_ratio"] == pytest.approx(1.15)
    assert out["size1000000.claim_p50_ms_ratio"] == 2.5
    assert out["size10000.pickup_p99_ms_ratio"] == 1.0
    assert out["size1000000.fill_total_s"] == 9.0
    assert "size1000000.fill_total_s_ratio" not in out
