"""The parity report (dispatcher.parity.build_report's dict) as Markdown, HTML or JSON.

Markdown and HTML are rendered from one list of blocks, so both show the same sections in
the same order (verdict first); HTML adds two matplotlib plots inlined as base64 PNG: the
skew histogram and divergences over time. Plots use the Agg canvas through Figure, never
pyplot, so rendering keeps no global state and needs no display.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dispatcher.parity import CLASSES

FORMATS = ("md", "html", "json")
SKEW_COLUMNS = ("p50", "p95", "p99", "max", "min")

CLASS_MEANING = {
    "dual_write_failed": "the mirror write to Redis failed (shadow_events dual_write_failed)",
    "redis_flushed": "Redis lost the schedule (a flush, or the reconciler re-added the lead)",
    "promoter_down": "no promoter ticked for over a second (leader killed or lost)",
    "cancel_race": "the lead was cancelled while one path was already dispatching it",
    "retry_not_mirrored": "a retry PostgreSQL dispatched that never reached the ZSET",
    "other": "unexplained: investigate before migrating",
}


@dataclass
class Block:
    """One piece of the report: a heading, a paragraph, a table or a plot's place."""

    kind: str  # h1 h2 h3 p table plot
    text: str = ""
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


# --- formatting ------------------------------------------------------------------------


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} %"


def num(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def when(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).isoformat(timespec="seconds")


def ids(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in values) or "-"


# --- the blocks ----------------------------------------------------------------------


def blocks(report: dict[str, Any]) -> list[Block]:
    """Every section, in reading order: the verdict, then the numbers behind it."""
    v, w, skew, inv = report["verdict"], report["window"], report["skew_ms"], report["inversions"]
    out = [
        Block("h1", "Parity report: shadow ZSET schedule vs PostgreSQL"),
        Block(
            "p",
            f"**Verdict: parity {pct(v['parity_pct'])}, worst skew {ms(v['worst_skew_ms'])},"
            f" {num(v['unexplained'])} unexplained divergences.** {v['summary']}",
        ),
        Block(
            "p",
            f"Window: {when(w['since']) if w['since'] else 'the beginning'} to"
            f" {when(w['until']) if w['until'] else 'now'}; reseller:"
            f" {w['reseller'] or 'all'}; a pair is divergent past"
            f" {w['threshold_ms']:,.0f} ms; generated {when(w['generated_at'])}. A lead attempt"
            " counts once per path, at its first observation.",
        ),
        Block("h2", "Summary"),
        Block(
            "table",
            headers=["dispatched by", "lead attempts", "share"],
            rows=[
                [label, num(report[key]), pct(_share(report[key], report["total"]))]
                for label, key in (
                    ("both paths", "both"),
                    ("PostgreSQL only", "pg_only"),
                    ("ZSET only", "zset_only"),
                )
            ]
            + [["total", num(report["total"]), pct(100.0 if report["total"] else None)]],
        ),
        Block("h2", "Dispatch-time skew (ZSET - PostgreSQL)"),
        Block(
            "p",
            "For each lead attempt both paths dispatched: the ZSET's observation minus"
            " PostgreSQL's. Positive means the ZSET design would have dialed later.",
        ),
        Block(
            "table",
            headers=["pairs", "p50", "p95", "p99", "max", "min"],
            rows=[
                [num(skew["count"]), *(ms(skew[k]) for k in ("p50", "p95", "p99", "max", "min"))]
            ],
        ),
        Block("plot", "skew"),
        Block("h2", "Order inversions"),
        Block(
            "p",
            f"{num(inv['count'])} of {num(inv['comparable'])} comparable pairs"
            f" ({inv['pct']:.4g} %) among {num(inv['pairs'])} lead attempts dispatched by both"
            f" were dispatched in opposite orders. Pairs are ordered by PostgreSQL's time; a"
            " tie in either path's time is not an inversion.",
        ),
        Block("h2", "Per reseller"),
        Block(
            "table",
            headers=[
                "reseller",
                "both",
                "PG only",
                "ZSET only",
                "parity",
                "skew p50",
                "skew p99",
                "skew max",
                "inversions",
                "divergences",
                "classes",
            ],
            rows=[
                [
                    r,
                    num(s["both"]),
                    num(s["pg_only"]),
                    num(s["zset_only"]),
                    pct(s["parity_pct"]),
                    ms(s["skew_ms"]["p50"]),
                    ms(s["skew_ms"]["p99"]),
                    ms(s["skew_ms"]["max"]),
                    num(s["inversions"]),
                    num(s["divergences"]),
                    ", ".join(f"{c} {n:,}" for c, n in s["classes"].items()) or "-",
                ]
                for r, s in report["per_reseller"].items()
            ],
        ),
        Block("h2", "Per hour"),
        Block(
            "table",
            headers=["hour (UTC)", "both", "PG only", "ZSET only", "skew p99", "divergences"],
            rows=[
                [
                    when(h["hour"]),
                    num(h["both"]),
                    num(h["pg_only"]),
                    num(h["zset_only"]),
                    ms(h["skew_p99"]),
                    num(h["divergences"]),
                ]
                for h in report["per_hour"]
            ],
        ),
        *_fault_blocks(report["faults"]),
        Block("h2", "Divergences"),
        Block(
            "p",
            "A lead attempt one path dispatched and the other did not, or a pair further apart"
            f" than {w['threshold_ms']:,.0f} ms; each is put in the first class whose rule"
            " matches (dispatcher/parity.py, classify).",
        ),
        Block(
            "table",
            headers=["class", "divergences", "what it means", "example lead ids"],
            rows=[
                [
                    c,
                    num(report["classes"].get(c, 0)),
                    CLASS_MEANING[c],
                    ids(report["examples"].get(c, [])),
                ]
                for c in CLASSES
            ],
        ),
        Block("plot", "timeline"),
    ]
    return [b for b in out if b.kind != "table" or b.rows or b.headers]


def _share(part: int, total: int) -> float | None:
    return None if total == 0 else part * 100.0 / total


def _fault_blocks(f: dict[str, Any]) -> list[Block]:
    """Redis flushes (heal time and what they cost), promoter pauses, dual-write failures."""
    out = [
        Block("h2", "Faults"),
        Block("h3", "Redis flushes"),
        Block(
            "p",
            "Heal time: from the flush to the last lead the reconciler re-added to the ZSET."
            " Missed: attempts the ZSET never dispatched because of it; late: pairs it"
            " delayed past the threshold.",
        ),
    ]
    if f["flushes"]:
        out.append(
            Block(
                "table",
                headers=["at", "detected by", "heal", "re-added", "missed", "late", "worst late"],
                rows=[
                    [
                        when(x["at"]),
                        x["detected_by"] or "-",
                        "-" if x["heal_s"] is None else f"{x['heal_s']:,.1f} s",
                        num(x["readded"]),
                        num(x["missed"]),
                        num(x["late"]),
                        ms(x["worst_late_ms"]),
                    ]
                    for x in f["flushes"]
                ],
            )
        )
    else:
        out.append(Block("p", "No flush in this window."))
    out += [
        Block("h3", "Promoter pauses"),
        Block(
            "p",
            "A new promoter leader took over after a gap with no tick (the previous leader was"
            f" killed, or lost its lock); leaderships lost: {num(f['promoter_lost'])}.",
        ),
    ]
    if f["promoter_pauses"]:
        out.append(
            Block(
                "table",
                headers=["resumed at", "pause", "new holder", "divergences"],
                rows=[
                    [when(x["at"]), ms(x["gap_ms"]), x["holder"] or "-", num(x["divergences"])]
                    for x in f["promoter_pauses"]
                ],
            )
        )
    else:
        out.append(Block("p", "No promoter pause in this window."))
    ops = ", ".join(f"{op} {n:,}" for op, n in f["dual_write_ops"].items()) or "none"
    out += [
        Block("h3", "Dual-write failures"),
        Block(
            "p",
            f"{num(f['dual_write_failures'])} mirror writes to Redis failed (by operation:"
            f" {ops}); {num(f['dual_write_divergences'])} divergences classified"
            f" dual_write_failed. Other Redis errors of the shadow: {num(f['redis_errors'])};"
            f" leads re-added by the reconciler: {num(f['reconcile_readded'])}; reaped:"
            f" {num(f['reaped'])}.",
        ),
    ]
    return out


# --- Markdown ------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: dict[str, Any]) -> str:
    lines: list[str] = []
    for b in blocks(report):
        if b.kind in ("h1", "h2", "h3"):
            lines += ["#" * int(b.kind[1]) + " " + b.text, ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "table":
            lines.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
            lines.append("| " + " | ".join("---" for _ in b.headers) + " |")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            if not b.rows:
                lines.append("| " + " | ".join("-" for _ in b.headers) + " |")
            lines.append("")
    return "\n".join(lines)


# --- HTML ----------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
td { font-variant-numeric: tabular-nums; }
p.verdict { font-size: 1.1rem; background: #f4f6f8; padding: 0.8rem; border-left: 4px solid #36c; }
img { max-width: 100%; }
"""


def _html_text(text: str) -> str:
    """Escaped, with Markdown's **bold** as <strong> (the only markup the blocks use)."""
    parts = html.escape(text).split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def to_html(report: dict[str, Any]) -> str:
    plots = {"skew": skew_png(report), "timeline": timeline_png(report)}
    alt = {"skew": "skew histogram", "timeline": "divergences over time"}
    body: list[str] = []
    for b in blocks(report):
        if b.kind in ("h1", "h2", "h3"):
            body.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            cls = ' class="verdict"' if b.text.startswith("**Verdict") else ""
            body.append(f"<p{cls}>{_html_text(b.text)}</p>")
        elif b.kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.headers)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                for row in b.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b.kind == "plot":
            data = base64.b64encode(plots[b.text]).decode("ascii")
            body.append(f'<img alt="{alt[b.text]}" src="data:image/png;base64,{data}">')
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Parity report</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def skew_png(report: dict[str, Any]) -> bytes:
    """Histogram of ZSET - PostgreSQL skews (the report's bins), with the threshold."""
    from matplotlib.figure import Figure

    hist = report["skew_histogram"]
    fig = Figure(figsize=(8, 3.2))
    ax = fig.subplots()
    if hist["counts"]:
        edges = hist["edges"]
        ax.stairs(hist["counts"], edges, fill=True, color="#3366cc")
        for line in (report["skew_ms"]["p50"], report["skew_ms"]["p99"]):
            ax.axvline(line, color="#888", linestyle=":", linewidth=1)
        title = f"{report['skew_ms']['count']:,} pairs; p50 and p99 dotted"
        if hist["over"]:
            title += f"; {hist['over']:,} beyond the p99.9 not shown"
        ax.set_title(title, fontsize=9)
    else:
        ax.text(0.5, 0.5, "no pair dispatched by both paths", ha="center", va="center")
    ax.set_xlabel("skew, ZSET - PostgreSQL (ms)")
    ax.set_ylabel("lead attempts")
    return _png(fig)


def timeline_png(report: dict[str, Any]) -> bytes:
    """Divergences per second, minute or hour, stacked by class."""
    from matplotlib.figure import Figure

    tl = report["divergence_timeline"]
    fig = Figure(figsize=(8, 3.2))
    ax = fig.subplots()
    if tl["rows"]:
        times = [r["at"] for r in tl["rows"]]
        width = dt.timedelta(seconds={"second": 1, "minute": 60}.get(tl["bucket"], 3600)) * 0.9
        bottom = [0] * len(times)
        for c in CLASSES:
            heights = [r.get(c, 0) for r in tl["rows"]]
            if any(heights):
                ax.bar(times, heights, width=width, bottom=bottom, label=c, align="edge")
                bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.legend(fontsize=8)
        fig.autofmt_xdate()
    else:
        ax.text(0.5, 0.5, "no divergence", ha="center", va="center")
    ax.set_ylabel(f"divergences per {tl['bucket']}")
    return _png(fig)


# --- JSON ----------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, default=_jsonable, indent=2) + "\n"


def render(report: dict[str, Any], fmt: str) -> str:
    """The report in one of FORMATS."""
    if fmt == "md":
        return to_markdown(report)
    if fmt == "html":
        return to_html(report)
    if fmt == "json":
        return to_json(report)
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
