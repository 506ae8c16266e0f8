"""`bench e2e`: leads/s from due to call placed, and pickup latency, at steady offered
loads and at a burst (the most the system sustains), in engine or simulator mode."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from dispatcher.bench import stats
from dispatcher.bench.env import BenchEnv
from dispatcher.bench.world import Shape, world


def run(
    env: BenchEnv, shape: Shape, rates: Sequence[float], seconds: float, burst: int
) -> dict[str, float]:
    out: dict[str, float] = {}
    with world(env, shape, "e2e") as w:
        for r in rates:
            for key, value in w.steady(r, seconds).items():
                out[f"steady{r:g}.{key}"] = value
        if burst:
            for key, value in w.burst(burst).items():
                out[f"burst{burst}.{key}"] = value
    return out


def shadow_cost(
    env: BenchEnv, shape: Shape, rates: Sequence[float], seconds: float, burst: int
) -> dict[str, float]:
    """The same run with the shadow ZSET schedule off and on, back to back: each figure of
    both, and what shadow on costs (throughput lost, p99 latency added, in %)."""
    off = run(env, dataclasses.replace(shape, shadow=False), rates, seconds, burst)
    on = run(env, dataclasses.replace(shape, shadow=True), rates, seconds, burst)
    return (
        {f"off.{k}": v for k, v in off.items()}
        | {f"on.{k}": v for k, v in on.items()}
        | (cost_pct(off, on))
    )


def cost_pct(off: Mapping[str, float], on: Mapping[str, float]) -> dict[str, float]:
    """What turning the shadow on costs, in %: throughput lost, p99 latency added (a
    negative figure: the run with the shadow on did better, i.e. noise)."""
    out: dict[str, float] = {}
    for key, before in off.items():
        ratio = stats.ratio(on.get(key, 0.0), before)
        if ratio is None or not key.endswith(("placed_per_s", "pickup_p99_ms")):
            continue
        lost = (1 - ratio) if key.endswith("per_s") else (ratio - 1)
        out[f"shadow_cost_pct.{key}"] = lost * 100
    return out
