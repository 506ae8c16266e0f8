"""The parity report on a real PostgreSQL: observations, shadow events, leads and their
events inserted by SQL; every number of the report checked against an independent SQL
query over the same rows (DISTINCT ON + FULL JOIN pairing, percentile_disc, a self-join
for inversions), each divergence class with its lead ids, each fault section, the three
renderings, and `switchboard parity report` with --out and --fail-under."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from dispatcher.cli import app
from dispatcher.parity import build_report
from dispatcher.parity_render import render

H = dt.datetime(2025, 6, 1, 10, 0, tzinfo=dt.UTC)
PNG = b"\x89PNG\r\n\x1a\n"


def at(seconds: float) -> dt.datetime:
    return H + dt.timedelta(seconds=seconds)


# Normal pairs of acme: PostgreSQL 100 ms apart, ZSET skews that reorder some of them.
ACME_SKEWS = [120, 80, 300, 40, 260, 90, 150, 60, 500, 70, 110, 30, 210, 95, 130, 45]
EXPECTED_CLASSES = {
    "dual_write_failed": [101],
    "redis_flushed": [102, 103, 109],
    "promoter_down": [104],
    "cancel_race": [105],
    "retry_not_mirrored": [106, 110],
    "other": [107, 108, 206],
}


def seed(conn: psycopg.Connection[Any]) -> None:
    """The traffic: normal pairs, one divergence per class (and near misses that must stay
    `other`), a flush that heals, a promoter pause, a failed dual write, a second reseller
    in the next hour, a re-observation, and a pair straddling H + 1 h."""
    obs: list[tuple[str, int, int, str, dt.datetime | None, dt.datetime]] = []

    def pair(lead: int, reseller: str, due: float, pg: float | None, zset: float | None,
             attempt: int = 1) -> None:  # fmt: skip
        if pg is not None:
            obs.append(("pg", lead, attempt, reseller, at(due), at(pg)))
        if zset is not None:
            obs.append(("zset", lead, attempt, reseller, at(due), at(zset)))

    for i, skew in enumerate(ACME_SKEWS):
        t = 60 + i * 0.1
        pair(i + 1, "acme", t, t + 0.01, t + 0.01 + skew / 1000)
    # Lead 1 seen again by both paths much later (a deferral): only the first counts.
    pair(1, "acme", 900, 900.0, 930.0)
    # 101: the ZADD failed, so only PostgreSQL dispatched it.
    pair(101, "acme", 600, 600.05, None)
    # 102: late after a flush, re-added by the reconciler; 103: due while the flush healed.
    pair(102, "acme", 1195, 1195.05, 1205.0)
    pair(103, "acme", 1201, 1201.05, None)
    # 109: a retry scheduled (its attempt 1 ended) before the flush, due long after the
    # flush healed: the flush took its ZADD and PostgreSQL claimed it before any re-add.
    # 110: the same retry scheduled after the flush: nothing explains its missing ZADD.
    pair(109, "acme", 1260, 1260.05, None, attempt=2)
    pair(110, "acme", 1262, 1262.05, None, attempt=2)
    # 104: the promoter leader was killed; the next one took over 5 s later.
    pair(104, "acme", 1800, 1800.05, 1804.0)
    # 105: cancelled 1 s after the ZSET popped it (PostgreSQL never claimed it).
    pair(105, "acme", 2400, None, 2400.2)
    # 106: attempt 1 paired; the retry (attempt 2) never reached the ZSET.
    pair(106, "acme", 2700, 2700.05, 2700.1)
    pair(106, "acme", 3000, 3000.05, None, attempt=2)
    # 107: ZSET only, nothing explains it; 108: cancelled, but a minute after.
    pair(107, "acme", 3300, None, 3300.1)
    pair(108, "acme", 3360, None, 3360.1)
    # zeta in the next hour: 5 pairs, one PostgreSQL-only lead that nothing explains.
    for i in range(5):
        t = 3700 + i
        pair(201 + i, "zeta", t, t + 0.02, t + 0.02 + (i + 1) * 0.05)
    pair(206, "zeta", 3800, 3800.02, None)
    # 301: first seen by PostgreSQL just before H + 1 h, by the ZSET just after.
    pair(301, "zeta", 3599, 3599.5, 3600.3)

    conn.execute("TRUNCATE parity_observations, shadow_events, lead_events, leads CASCADE")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO parity_observations"
            " (path, lead_id, attempt_no, reseller_id, due_at, observed_at)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            obs,
        )
    events = [
        (at(570), "dual_write_failed", 101, "acme", {"op": "zadd", "error": "ConnectionError"}),
        (at(1190), "redis_flushed", None, None, {"detected_by": "promoter"}),
        (at(1198), "reconcile_readded", 102, "acme", {"attempt_no": 1}),
        (at(1204), "reconcile_readded", 999, "acme", {"attempt_no": 1}),
        (at(1799), "promoter_lost", None, None, {"holder": "host-a"}),
        (at(1803.9), "promoter_acquired", None, None, {"holder": "host-b", "gap_ms": 5000}),
        (at(2000), "promoter_acquired", None, None, {"holder": "host-a", "gap_ms": 200}),
        (at(2500), "redis_error", None, None, {"where": "consumer", "error": "timeout"}),
        (at(3100), "reaped", 106, "acme", {}),
    ]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO shadow_events (at, kind, lead_id, reseller_id, detail)"
            " VALUES (%s, %s, %s, %s, %s)",
            [(a, k, lead, r, Jsonb(d)) for a, k, lead, r, d in events],
        )
    for lead, retried in ((109, 1185.0), (110, 1230.0)):
        conn.execute(
            "INSERT INTO leads (id, reseller_id, phone, template, status, next_attempt_at)"
            " VALUES (%s, 'acme', %s, 'default', 'COMPLETED', %s)",
            (lead, f"+1415555{lead:04d}", at(0)),
        )
        conn.execute(
            "INSERT INTO lead_events (lead_id, from_status, to_status, reason, at) VALUES"
            " (%s, NULL, 'BACKLOG', 'created', %s), (%s, 'IN_CALL', 'BACKLOG', 'call_busy', %s)",
            (lead, at(0), lead, at(retried)),
        )
    for lead, cancelled in ((105, 2401.2), (108, 3430.0)):
        conn.execute(
            "INSERT INTO leads (id, reseller_id, phone, template, status, next_attempt_at)"
            " VALUES (%s, 'acme', %s, 'default', 'CANCELLED', %s)",
            (lead, f"+1415555{lead:04d}", at(0)),
        )
        conn.execute(
            "INSERT INTO lead_events (lead_id, from_status, to_status, reason, at) VALUES"
            " (%s, NULL, 'BACKLOG', 'created', %s), (%s, 'BACKLOG', 'CANCELLED', 'api', %s)",
            (lead, at(0), lead, at(cancelled)),
        )
    conn.commit()


@pytest.fixture(scope="module")
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as c:
        seed(c)
        yield c


@pytest.fixture(scope="module")
def report(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    return build_report(conn)


# --- the independent SQL -------------------------------------------------------------

PAIRS_SQL = """
WITH pg AS (
    SELECT DISTINCT ON (lead_id, attempt_no) lead_id, attempt_no, reseller_id, observed_at
    FROM parity_observations WHERE path = 'pg' {filter}
    ORDER BY lead_id, attempt_no, observed_at
), z AS (
    SELECT DISTINCT ON (lead_id, attempt_no) lead_id, attempt_no, reseller_id, observed_at
    FROM parity_observations WHERE path = 'zset' {filter}
    ORDER BY lead_id, attempt_no, observed_at
)
SELECT coalesce(pg.lead_id, z.lead_id) AS lead_id,
       coalesce(pg.attempt_no, z.attempt_no) AS attempt_no,
       coalesce(pg.reseller_id, z.reseller_id) AS reseller_id,
       pg.observed_at AS pg_at, z.observed_at AS z_at,
       least(pg.observed_at, z.observed_at) AS first_at,
       extract(epoch FROM z.observed_at - pg.observed_at) * 1000 AS skew_ms
FROM pg FULL JOIN z USING (lead_id, attempt_no)
"""


def pairs_cte(filter_sql: str = "", window: str = "true") -> str:
    return f"WITH k AS (SELECT * FROM ({PAIRS_SQL.format(filter=filter_sql)}) x WHERE {window})"


def sql_counts(conn: psycopg.Connection[Any], cte: str, group: str | None = None) -> Any:
    cols = f"{group} AS g," if group else ""
    rows = conn.execute(
        f"""{cte}
        SELECT {cols}
               count(*) FILTER (WHERE pg_at IS NOT NULL AND z_at IS NOT NULL) AS both,
               count(*) FILTER (WHERE z_at IS NULL) AS pg_only,
               count(*) FILTER (WHERE pg_at IS NULL) AS zset_only,
               percentile_disc(0.5) WITHIN GROUP (ORDER BY skew_ms) AS p50,
               percentile_disc(0.95) WITHIN GROUP (ORDER BY skew_ms) AS p95,
               percentile_disc(0.99) WITHIN GROUP (ORDER BY skew_ms) AS p99,
               max(skew_ms) AS max
        FROM k {f"GROUP BY {group} ORDER BY {group}" if group else ""}"""
    ).fetchall()
    return rows if group else rows[0]


def sql_inversions(conn: psycopg.Connection[Any], cte: str, same_reseller: bool = False) -> int:
    extra = "AND a.reseller_id = b.reseller_id" if same_reseller else ""
    return conn.execute(
        f"""{cte}
        SELECT count(*) AS n FROM k a JOIN k b
          ON a.pg_at < b.pg_at AND a.z_at > b.z_at {extra}"""
    ).fetchone()["n"]  # type: ignore[index]


def f(value: Any) -> float | None:
    return None if value is None else float(value)


# --- counts --------------------------------------------------------------------------


def test_counts_equal_direct_sql(conn: psycopg.Connection[Any], report: dict[str, Any]) -> None:
    want = sql_counts(conn, pairs_cte())
    assert (report["both"], report["pg_only"], report["zset_only"]) == (
        want["both"],
        want["pg_only"],
        want["zset_only"],
    )
    assert (want["both"], want["pg_only"], want["zset_only"]) == (25, 6, 3)
    total = want["both"] + want["pg_only"] + want["zset_only"]
    assert report["total"] == total
    assert report["parity_pct"] == pytest.approx(want["both"] * 100 / total)
    assert report["verdict"]["parity_pct"] == report["parity_pct"]


def test_skew_equals_percentile_disc(conn: psycopg.Connection[Any], report: dict) -> None:
    want = sql_counts(conn, pairs_cte())
    skew = report["skew_ms"]
    assert skew["count"] == want["both"]
    for k in ("p50", "p95", "p99", "max"):
        assert skew[k] == pytest.approx(f(want[k]), abs=1e-9), k
    assert report["verdict"]["worst_skew_ms"] == pytest.approx(f(want["max"]))


def test_inversions_equal_self_join(conn: psycopg.Connection[Any], report: dict) -> None:
    want = sql_inversions(conn, pairs_cte())
    assert want > 0
    inv = report["inversions"]
    assert inv["count"] == want
    assert inv["pairs"] == report["both"]
    assert inv["comparable"] == report["both"] * (report["both"] - 1) // 2
    assert inv["pct"] == pytest.approx(want * 100 / inv["comparable"])
    for reseller, stats in report["per_reseller"].items():
        cte = pairs_cte(f"AND reseller_id = '{reseller}'")
        assert stats["inversions"] == sql_inversions(conn, cte), reseller


def test_per_reseller_and_hour_equal_sql(conn: psycopg.Connection[Any], report: dict) -> None:
    by_reseller = sql_counts(conn, pairs_cte(), "reseller_id")
    assert list(report["per_reseller"]) == [r["g"] for r in by_reseller] == ["acme", "zeta"]
    for row in by_reseller:
        got = report["per_reseller"][row["g"]]
        assert (got["both"], got["pg_only"], got["zset_only"]) == (
            row["both"],
            row["pg_only"],
            row["zset_only"],
        )
        assert got["skew_ms"]["p99"] == pytest.approx(f(row["p99"]))
    by_hour = sql_counts(conn, pairs_cte(), "date_trunc('hour', first_at, 'UTC')")
    assert [h["hour"] for h in report["per_hour"]] == [r["g"] for r in by_hour]
    for got, row in zip(report["per_hour"], by_hour, strict=True):
        assert (got["both"], got["pg_only"], got["zset_only"]) == (
            row["both"],
            row["pg_only"],
            row["zset_only"],
        )
        assert got["skew_p99"] == pytest.approx(f(row["p99"]))
    assert sum(h["divergences"] for h in report["per_hour"]) == len(report["divergences"])


def test_window_and_reseller_filters(conn: psycopg.Connection[Any]) -> None:
    """A key belongs to the window of its first observation: the pair straddling H + 1 h
    is neither cut in two nor counted after H + 1 h."""
    since = at(3600)
    got = build_report(conn, since=since)
    want = sql_counts(conn, pairs_cte(window=f"first_at >= '{since.isoformat()}'"))
    assert (got["both"], got["pg_only"], got["zset_only"]) == (
        want["both"],
        want["pg_only"],
        want["zset_only"],
    )
    assert got["both"] == 5
    before = build_report(conn, until=since)
    assert before["both"] + got["both"] == build_report(conn)["both"]
    assert 301 not in {d["lead_id"] for d in before["divergences"] + got["divergences"]}
    zeta = build_report(conn, reseller="zeta")
    want = sql_counts(conn, pairs_cte("AND reseller_id = 'zeta'"))
    assert (zeta["both"], zeta["pg_only"], zeta["zset_only"]) == (
        want["both"],
        want["pg_only"],
        want["zset_only"],
    )
    assert list(zeta["per_reseller"]) == ["zeta"]
    # The flush and the pause were before H + 1 h: not in that window's fault sections.
    assert got["faults"]["flushes"] == [] and got["faults"]["promoter_pauses"] == []


def test_empty_window_is_full_parity(conn: psycopg.Connection[Any]) -> None:
    empty = build_report(conn, since=at(-7200), until=at(-3600))
    assert empty["total"] == 0 and empty["parity_pct"] == 100.0
    assert empty["skew_ms"]["p99"] is None and empty["divergences"] == []
    assert "nothing to compare" in empty["verdict"]["summary"]
    assert "Verdict" in render(empty, "md") and render(empty, "html").count("<img") == 2


# --- divergences and faults ----------------------------------------------------------


def test_each_class_with_its_lead_ids(report: dict[str, Any]) -> None:
    by_class: dict[str, list[int]] = {}
    for d in report["divergences"]:
        by_class.setdefault(d["class"], []).append(d["lead_id"])
    assert {c: sorted(v) for c, v in by_class.items()} == EXPECTED_CLASSES
    assert report["examples"] == EXPECTED_CLASSES
    assert report["classes"] == {c: len(v) for c, v in EXPECTED_CLASSES.items()}
    paths = {d["lead_id"]: d["path"] for d in report["divergences"]}
    assert paths[102] == paths[104] == "both"
    assert paths[101] == paths[106] == paths[109] == paths[110] == "pg"
    assert paths[105] == "zset"
    late = {d["lead_id"]: d["skew_ms"] for d in report["divergences"] if d["path"] == "both"}
    assert late == {102: pytest.approx(9950.0), 104: pytest.approx(3950.0)}
    assert report["verdict"]["unexplained"] == 3
    assert "3 unexplained" in report["verdict"]["summary"]


def test_fault_sections(conn: psycopg.Connection[Any], report: dict[str, Any]) -> None:
    faults = report["faults"]
    (flush,) = faults["flushes"]
    assert flush["at"] == at(1190) and flush["detected_by"] == "promoter"
    assert flush["heal_s"] == pytest.approx(14.0)  # to the last re-add, at 1204
    assert flush["readded"] == 2
    assert (flush["missed"], flush["late"]) == (2, 1)  # 103 and 109 missed, 102 late
    assert flush["worst_late_ms"] == pytest.approx(9950.0)
    (pause,) = faults["promoter_pauses"]  # the 200 ms hand-over is no pause
    assert pause == {"at": at(1803.9), "gap_ms": 5000.0, "holder": "host-b", "divergences": 1}
    counts = {
        r["kind"]: r["n"]
        for r in conn.execute("SELECT kind, count(*) AS n FROM shadow_events GROUP BY kind")
    }
    assert faults["dual_write_failures"] == counts["dual_write_failed"] == 1
    assert faults["dual_write_ops"] == {"zadd": 1}
    assert faults["dual_write_divergences"] == 1
    assert faults["promoter_lost"] == counts["promoter_lost"] == 1
    assert faults["redis_errors"] == counts["redis_error"] == 1
    assert faults["reconcile_readded"] == counts["reconcile_readded"] == 2
    assert faults["reaped"] == counts["reaped"] == 1


# --- rendering -----------------------------------------------------------------------

SECTIONS = (
    "Summary",
    "Dispatch-time skew",
    "Order inversions",
    "Per reseller",
    "Per hour",
    "Faults",
    "Redis flushes",
    "Promoter pauses",
    "Dual-write failures",
    "Divergences",
)


def test_markdown_has_verdict_first_and_every_section(report: dict[str, Any]) -> None:
    md = render(report, "md")
    verdict = md.index("**Verdict: parity")
    positions = [md.index(f"# {s}") for s in SECTIONS]
    assert verdict < positions[0] and positions == sorted(positions)
    assert f"{report['parity_pct']:.3f} %" in md.split("\n## ")[0]
    for c, lead_ids in EXPECTED_CLASSES.items():
        assert re.search(rf"\| {c} \|.*\| {', '.join(map(str, lead_ids))} \|", md), c


def test_html_has_sections_and_two_png_plots(report: dict[str, Any]) -> None:
    page = render(report, "html")
    assert page.index("Verdict: parity") < page.index("<h2>Summary</h2>")
    for s in SECTIONS:
        assert f">{s}" in page, s
    images = re.findall(r'<img alt="[^"]+" src="data:image/png;base64,([^"]+)">', page)
    assert len(images) == 2
    assert all(base64.b64decode(i).startswith(PNG) for i in images)


def test_json_is_the_report(report: dict[str, Any]) -> None:
    data = json.loads(render(report, "json"))
    for key in ("both", "pg_only", "zset_only", "parity_pct", "classes", "examples"):
        assert data[key] == report[key]
    assert data["faults"]["flushes"][0]["at"] == at(1190).isoformat()
    assert data["per_hour"][0]["hour"] == report["per_hour"][0]["hour"].isoformat()


# --- the command ---------------------------------------------------------------------


def test_cli_fail_under_and_out(database_url: str, report: dict, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["parity", "report", "--database-url", database_url]
    parity = report["parity_pct"]  # 25 of 32: 78.125 %
    below = runner.invoke(app, [*base, "--format", "json", "--fail-under", f"{parity + 0.1}"])
    assert below.exit_code == 1, below.output
    assert "below --fail-under" in below.stderr
    assert json.loads(below.stdout)["both"] == report["both"]
    above = runner.invoke(app, [*base, "--fail-under", f"{parity - 0.1}"])
    assert above.exit_code == 0, above.output
    assert "Verdict" in above.stdout
    out = tmp_path / "parity.html"
    written = runner.invoke(app, [*base, "--format", "html", "--out", str(out), "--since", "1h"])
    assert written.exit_code == 0, written.output
    assert out.read_text().count("data:image/png;base64,") == 2
    # --since 1h: these observations are a year old, so that window is empty.
    assert "nothing to compare" in out.read_text()
    iso = runner.invoke(
        app, [*base, "--format", "json", "--since", at(3600).isoformat(), "--reseller", "zeta"]
    )
    assert iso.exit_code == 0, iso.output
    assert json.loads(iso.stdout)["both"] == 5
    bad = runner.invoke(app, [*base, "--since", "yesterday"])
    assert bad.exit_code == 2 and "--since" in bad.stderr
