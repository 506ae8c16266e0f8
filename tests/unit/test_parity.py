"""The parity report's pure parts: nearest-rank percentiles against hand-computed values,
the merge-sort inversion count against a brute-force oracle, and each classification rule
with a case it must match and one it must not."""

from __future__ import annotations

import datetime as dt
from itertools import combinations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.parity import (
    Context,
    Divergence,
    Flush,
    PromoterGap,
    classify,
    count_inversions,
    from_us,
    parity_pct,
    percentile,
    skew_stats,
    to_us,
)

S = 1_000_000  # µs per second
T0 = 1_750_000_000 * S  # a fixed instant


# --- percentiles ---------------------------------------------------------------------


def test_percentile_nearest_rank_by_hand() -> None:
    # 20 values 1..20: p50 is rank ceil(10) = 10; p95 rank ceil(19) = 19; p99 rank
    # ceil(19.8) = 20; p5 rank 1.
    values = list(range(1, 21))
    assert percentile(values, 50) == 10
    assert percentile(values, 95) == 19
    assert percentile(values, 99) == 20
    assert percentile(values, 5) == 1
    assert percentile(values, 100) == 20
    # 4 values: p50 rank 2, p75 rank 3, p76 rank ceil(3.04) = 4, p1 rank 1.
    assert percentile([10, 20, 30, 40], 50) == 20
    assert percentile([10, 20, 30, 40], 75) == 30
    assert percentile([10, 20, 30, 40], 76) == 40
    assert percentile([10, 20, 30, 40], 1) == 10
    assert percentile([7.5], 99) == 7.5
    assert percentile([], 50) is None


def test_percentile_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([1, 2], 0)
    with pytest.raises(ValueError):
        percentile([1, 2], 100.5)


def test_skew_stats_sorts_and_counts() -> None:
    stats = skew_stats([300.0, -50.0, 100.0, 200.0])
    assert stats == {
        "p50": 100.0,
        "p95": 300.0,
        "p99": 300.0,
        "max": 300.0,
        "min": -50.0,
        "count": 4,
    }
    assert skew_stats([])["p99"] is None


def test_parity_pct() -> None:
    assert parity_pct(0, 0, 0) == 100.0
    assert parity_pct(3, 1, 0) == 75.0
    assert parity_pct(1, 1, 2) == 25.0


def test_microseconds_round_trip() -> None:
    at = dt.datetime(2025, 6, 1, 12, 30, 15, 123456, tzinfo=dt.UTC)
    assert from_us(to_us(at)) == at
    assert to_us(at) - to_us(at - dt.timedelta(microseconds=1)) == 1


# --- inversions ----------------------------------------------------------------------


def brute_inversions(values: list[int]) -> int:
    return sum(1 for a, b in combinations(values, 2) if a > b)


def test_inversions_by_hand() -> None:
    assert count_inversions([]) == 0
    assert count_inversions([5]) == 0
    assert count_inversions([1, 2, 3]) == 0
    assert count_inversions([3, 2, 1]) == 3
    assert count_inversions([2, 2, 1]) == 2  # ties are not inversions; each 2 > 1
    assert count_inversions([1, 1, 1]) == 0
    assert count_inversions([2, 4, 1, 3, 5]) == 3  # (2,1) (4,1) (4,3)


@given(st.lists(st.integers(min_value=-20, max_value=20), max_size=80))
def test_inversions_match_brute_force(values: list[int]) -> None:
    assert count_inversions(values) == brute_inversions(values)


def test_inversions_do_not_modify_input() -> None:
    values = [3, 1, 2]
    count_inversions(values)
    assert values == [3, 1, 2]


# --- classification ------------------------------------------------------------------


def div(
    *,
    path: str = "pg",
    attempt: int = 1,
    due: int | None = T0,
    pg: int | None = T0 + 10_000,
    zset: int | None = None,
    lead: int = 7,
) -> Divergence:
    return Divergence(lead, attempt, "acme", path, due, pg, zset)


def test_dual_write_failed_rule() -> None:
    ctx = Context(dual_write={7: [T0 - 5 * S]})
    assert classify(div(), ctx) == "dual_write_failed"
    # Another lead's failure explains nothing.
    assert classify(div(lead=8), ctx) == "other"
    # A failure before this lead's previous attempt was dispatched belongs to that attempt.
    ctx.previous = {(7, 1): T0 - 2 * S}
    assert classify(div(attempt=2, path="zset", pg=None, zset=T0), ctx) == "other"
    # ... one after it belongs to this attempt.
    ctx.dual_write = {7: [T0 - 1 * S]}
    assert classify(div(attempt=2, path="zset", pg=None, zset=T0), ctx) == "dual_write_failed"
    # A failure long after the key's last observation is not its cause.
    ctx = Context(dual_write={7: [T0 + 60 * S]})
    assert classify(div(), ctx) == "other"


def test_redis_flushed_rule_readded() -> None:
    assert classify(div(), Context(readded={(7, 1)})) == "redis_flushed"
    assert classify(div(), Context(readded={(7, None)})) == "redis_flushed"
    assert classify(div(), Context(readded={(7, 2)})) == "other"  # another attempt


def test_redis_flushed_rule_flush_time() -> None:
    late = div(path="both", pg=T0 + 10_000, zset=T0 + 4 * S)
    # Between the due time and the last observation.
    assert classify(late, Context(flushes=[Flush(T0 + 2 * S, "promoter")])) == "redis_flushed"
    # Long after: not its cause.
    assert classify(late, Context(flushes=[Flush(T0 + 60 * S, "promoter")])) == "other"
    # Before the due time, while the flush was still healing (last re-add after the due).
    healing = Flush(T0 - 3 * S, "promoter", heal_end_us=T0 + 1 * S, readded=5)
    assert classify(late, Context(flushes=[healing])) == "redis_flushed"
    # Before the due time, healed before it: not its cause.
    healed = Flush(T0 - 30 * S, "promoter", heal_end_us=T0 - 20 * S, readded=5)
    assert classify(late, Context(flushes=[healed])) == "other"


def test_promoter_down_rule() -> None:
    late = div(path="both", pg=T0 + 10_000, zset=T0 + 3 * S)
    gap = PromoterGap(T0 - 1 * S, T0 + 3 * S - 1000, "host-b", 4000.0)
    assert classify(late, Context(promoter_gaps=[gap])) == "promoter_down"
    earlier = PromoterGap(T0 - 20 * S, T0 - 15 * S, "host-b", 5000.0)
    assert classify(late, Context(promoter_gaps=[earlier])) == "other"


def test_cancel_race_rule() -> None:
    assert classify(div(), Context(cancels={7: [T0 + 2 * S]})) == "cancel_race"
    assert classify(div(), Context(cancels={7: [T0 - 4 * S]})) == "cancel_race"
    assert classify(div(), Context(cancels={7: [T0 + 30 * S]})) == "other"
    assert classify(div(), Context(cancels={8: [T0]})) == "other"


def test_finished_before_the_promoter_tick_is_a_cancel_race() -> None:
    ms = 1000  # µs
    # Claimed 10 ms after due, ended 150 ms after due: before the first tick (<= 400 ms).
    assert classify(div(), Context(rescheduled={7: [T0 + 150 * ms]})) == "cancel_race"
    # A retry re-scheduled it 390 ms after due: still within due + two ticks.
    assert classify(div(attempt=2), Context(rescheduled={7: [T0 + 390 * ms]})) == "cancel_race"
    # Ended after the promoter had its chance: the ZSET should have seen it.
    assert classify(div(), Context(rescheduled={7: [T0 + 900 * ms]})) == "other"
    # Before PostgreSQL's claim: that change belongs to an earlier attempt.
    assert classify(div(), Context(rescheduled={7: [T0 + 5 * ms]})) == "other"
    # Only the ZSET saw it: not this rule.
    zset_only = div(path="zset", pg=None, zset=T0 + 100 * ms)
    assert classify(zset_only, Context(rescheduled={7: [T0 + 150 * ms]})) == "other"


def test_retry_not_mirrored_rule() -> None:
    assert classify(div(attempt=2), Context()) == "retry_not_mirrored"
    assert classify(div(attempt=1), Context()) == "other"  # a first attempt
    # A retry only the ZSET dispatched is not a missing mirror.
    assert classify(div(attempt=2, path="zset", pg=None, zset=T0), Context()) == "other"


def test_first_rule_wins() -> None:
    everything = Context(
        dual_write={7: [T0]},
        readded={(7, 2)},
        cancels={7: [T0]},
        flushes=[Flush(T0, "consumer")],
    )
    assert classify(div(attempt=2), everything) == "dual_write_failed"
    everything.dual_write = {}
    assert classify(div(attempt=2), everything) == "redis_flushed"
    everything.readded, everything.flushes = set(), []
    assert classify(div(attempt=2), everything) == "cancel_race"


def test_redis_flushed_rule_scheduled_before_the_flush() -> None:
    # A retry ZADDed at T0 - 5 s (its previous attempt ended), due at T0 + 10 s, after the
    # flush healed: the flush at T0 took it, and PostgreSQL claimed it before any re-add.
    retry = div(attempt=2, due=T0 + 10 * S, pg=T0 + 10 * S + 20_000)
    healed = Flush(T0, "promoter", heal_end_us=T0 + 1 * S, readded=3)
    assert classify(retry, Context(flushes=[healed], backlog={7: [T0 - 20 * S, T0 - 5 * S]})) == (
        "redis_flushed"
    )
    # Scheduled after the flush (its attempt ended at T0 + 2 s): the flush never saw it.
    ctx = Context(flushes=[healed], backlog={7: [T0 - 20 * S, T0 + 2 * S]})
    assert classify(retry, ctx) == "retry_not_mirrored"
    # A transition into BACKLOG after the key's first observation is not its scheduling.
    ctx = Context(flushes=[healed], backlog={7: [T0 + 2 * S, T0 + 11 * S]})
    assert classify(retry, ctx) == "retry_not_mirrored"
    # Scheduled before, but the flush was recorded well after its last observation
    # (beyond the detection lag): it was dispatched before Redis lost anything.
    late_flush = Flush(T0 + 10 * S + 20_000 + 2 * S, "promoter")
    ctx = Context(flushes=[late_flush], backlog={7: [T0 - 5 * S]})
    assert classify(retry, ctx) == "retry_not_mirrored"
    # ... but within the detection lag it may have happened before the claim.
    near = Flush(T0 + 10 * S + 20_000 + 1 * S, "promoter")
    assert classify(retry, Context(flushes=[near], backlog={7: [T0 - 5 * S]})) == ("redis_flushed")
    # Scheduled before, but first observed after the reconciler had restored the flush's
    # losses (its last re-add + one interval): a re-add would have brought it back.
    ctx = Context(flushes=[healed], backlog={7: [T0 - 5 * S]}, reconcile_us=3 * S)
    assert classify(retry, ctx) == "retry_not_mirrored"


def test_promoter_down_rule_takeover_tick() -> None:
    # Due 100 ms after the takeover: the first tick after it promotes the pause's burst.
    gap = PromoterGap(T0 - 5 * S, T0, "host-b", 5000.0)
    burst = div(path="both", due=T0 + 100_000, pg=T0 + 110_000, zset=T0 + 1_300_000)
    assert classify(burst, Context(promoter_gaps=[gap], tolerance_us=0)) == "promoter_down"
    # Due well after the takeover's first tick: the pause does not explain it.
    after = div(path="both", due=T0 + 500_000, pg=T0 + 510_000, zset=T0 + 2_000_000)
    assert classify(after, Context(promoter_gaps=[gap], tolerance_us=0)) == "other"
    # Observed by both before the last tick ahead of the pause: not waiting through it.
    before = div(path="both", due=T0 - 9 * S, pg=T0 - 9 * S, zset=T0 - 6 * S)
    assert classify(before, Context(promoter_gaps=[gap], tolerance_us=0)) == "other"


def test_timeline_buckets_follow_the_span() -> None:
    from dispatcher.parity import _timeline

    s = 1_000_000
    short = [div(pg=T0 + i * s) for i in (0, 0, 3)]
    tl = _timeline(short)
    assert tl["bucket"] == "second"
    assert [sum(v for k, v in r.items() if k != "at") for r in tl["rows"]] == [2, 1]
    assert _timeline([div(pg=T0), div(pg=T0 + 3600 * s)])["bucket"] == "minute"
    assert _timeline([div(pg=T0), div(pg=T0 + 7 * 3600 * s)])["bucket"] == "hour"
