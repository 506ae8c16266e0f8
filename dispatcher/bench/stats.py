"""The arithmetic behind every reported number, kept apart so that tests can check it."""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence

PERCENTILES = (50, 95, 99)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p % of values at or below
    it (a value that was observed, never an interpolation)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < p <= 100:
        raise ValueError(f"percentile {p} outside (0, 100]")
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)), 1) - 1]


def latency_summary(values_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max and the count, in the unit given."""
    if not values_ms:
        return {"count": 0}
    out = {f"p{p}": percentile(values_ms, p) for p in PERCENTILES}
    out["max"] = max(values_ms)
    out["count"] = len(values_ms)
    return out


def pickup_ms(pairs: Iterable[tuple[dt.datetime, dt.datetime]]) -> list[float]:
    """Pickup latency of each (due, placed) pair: placed - due, in ms. A call placed before
    it was due would be a bug in the schedule; it shows as a negative value, not hidden."""
    return [(placed - due).total_seconds() * 1000 for due, placed in pairs]


def rate(count: int, seconds: float) -> float:
    """Items per second; 0 for an empty or instant interval rather than infinity."""
    return count / seconds if seconds > 0 and count else 0.0


def span_rate(starts: Sequence[dt.datetime], ends: Sequence[dt.datetime]) -> float:
    """Throughput of a run: items finished / (last finish - first start)."""
    if not ends:
        return 0.0
    return rate(len(ends), (max(ends) - min(starts)).total_seconds())


def aggregate(runs: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric over repeated runs: median, min, max and how many runs had it."""
    keys = sorted({k for run in runs for k in run})
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        values = [run[key] for run in runs if key in run]
        out[key] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "runs": len(values),
        }
    return out


def ratio(ours: float, theirs: float) -> float | None:
    """ours / theirs, None when theirs is 0 (no ratio rather than a division error)."""
    return ours / theirs if theirs else None
