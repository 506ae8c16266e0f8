"""Repeated runs → medians with min and max → a table on the terminal and a JSON file
under ops/bench/results/ that RESULTS.md is written from."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
import redis
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from dispatcher.bench import stats

RESULTS_DIR = Path("ops/bench/results")
Run = Callable[[], Mapping[str, float]]


def repeat(name: str, run: Run, repeats: int) -> list[dict[str, float]]:
    """`repeats` runs of one scenario, each with its own fresh world."""
    out: list[dict[str, float]] = []
    with Progress(transient=True) as progress:
        task = progress.add_task(f"bench {name}", total=repeats)
        for _ in range(repeats):
            out.append(dict(run()))
            progress.advance(task)
    return out


def machine(database_url: str, redis_url: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        pg = row[0] if row else "?"
    client = redis.Redis.from_url(redis_url)
    try:
        info = client.info("server")
        flavour = f"valkey {info['valkey_version']}" if "valkey_version" in info else "redis"
        rd = f"{info.get('redis_version')} ({flavour})"
    finally:
        client.close()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "postgresql": pg,
        "redis": rd,
        "commit": _commit(),
    }


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        )
    except OSError:
        return "?"
    return out.stdout.strip() or "?"


def record(
    scenario: str,
    runs: list[dict[str, float]],
    options: Mapping[str, Any],
    host: Mapping[str, Any],
    out_dir: Path = RESULTS_DIR,
) -> Path:
    """Write the runs and their aggregate as JSON; print the table; return the path."""
    summary = stats.aggregate(runs)
    doc = {
        "scenario": scenario,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["switchboard", "bench", *sys.argv[2:]]),
        "options": dict(options),
        "machine": dict(host),
        "runs": runs,
        "summary": summary,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    path = out_dir / f"{scenario}-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print_table(scenario, summary)
    return path


def print_table(scenario: str, summary: Mapping[str, Mapping[str, float]]) -> None:
    table = Table(title=f"switchboard bench {scenario}")
    for col in ("metric", "median", "min", "max", "runs"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key, agg in summary.items():
        table.add_row(
            key, _fmt(agg["median"]), _fmt(agg["min"]), _fmt(agg["max"]), str(int(agg["runs"]))
        )
    Console().print(table)


def _fmt(value: float) -> str:
    return f"{value:,.1f}" if abs(value) < 1e6 else f"{value:,.0f}"
