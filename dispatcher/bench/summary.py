"""Markdown tables from the newest JSON result of each scenario: the measured half of
ops/bench/RESULTS.md (the analysis around the tables is written by people)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def latest(results_dir: Path) -> dict[str, dict[str, Any]]:
    """The newest result per scenario (file names sort by time)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(results_dir.glob("*.json")):
        doc = json.loads(path.read_text())
        doc["file"] = path.name
        out[doc["scenario"]] = doc
    return out


def table(doc: Mapping[str, Any]) -> str:
    """One scenario: the command, the machine, then median / min / max per metric."""
    host = doc["machine"]
    lines = [
        f"### {doc['scenario']}",
        "",
        f"`{doc['command']}` — {doc['at']}, commit {host.get('commit')}, "
        f"{len(doc['runs'])} run(s), file `{doc['file']}`",
        "",
        "| metric | median | min | max |",
        "|---|---:|---:|---:|",
    ]
    for key, agg in doc["summary"].items():
        lines.append(f"| {key} | {_n(agg['median'])} | {_n(agg['min'])} | {_n(agg['max'])} |")
    return "\n".join(lines) + "\n"


def machine_line(docs: Mapping[str, Mapping[str, Any]]) -> str:
    hosts = {json.dumps(d["machine"] | {"commit": None}, sort_keys=True) for d in docs.values()}
    parts = []
    for raw in sorted(hosts):
        h = json.loads(raw)
        parts.append(
            f"{h['cores']} cores, {h['memory_gib']} GiB, Python {h['python']}, "
            f"PostgreSQL {h['postgresql']}, Redis {h['redis']}"
        )
    return "; ".join(parts)


def render(results_dir: Path) -> str:
    docs = latest(results_dir)
    if not docs:
        return "No results yet: run `switchboard bench SCENARIO`.\n"
    body = [f"Machine: {machine_line(docs)}.", ""]
    body += [table(doc) for _, doc in sorted(docs.items())]
    return "\n".join(body)


def _n(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.3g}"
