"""`switchboard import` on a real PostgreSQL: 100,000 rows with 1 % bad ones, the rejects
file, and a run killed halfway then rerun, which must end with the clean import's leads."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from psycopg.rows import dict_row
from typer.testing import CliRunner

from dispatcher import importer
from dispatcher.cli import app

ROOT = Path(__file__).resolve().parents[2]
RESELLER = "acme"
TEMPLATE = "campaign"
N_ROWS = 100_000
# Original header spelling is kept in the rejects file; the importer matches it loosely.
HEADER = [
    "Phone",
    "customer_name",
    "priority",
    "timezone",
    "not_before",
    "expires_at",
    "max_attempts",
    "merchant_id",
    "payload",
    "idempotency_key",
    "template",
]
AREAS = {
    "415": "America/Los_Angeles",
    "212": "America/New_York",
    "312": "America/Chicago",
    "617": "America/New_York",
    "206": "America/Los_Angeles",
    "303": "America/Denver",
    "404": "America/New_York",
    "512": "America/Chicago",
    "702": "America/Los_Angeles",
    "808": "Pacific/Honolulu",
}
AREA_CODES = list(AREAS)
# Every 100th row (i % 100 == 37) is bad in exactly one field, cycling through these.
BAD_KINDS: list[tuple[str, str, str]] = [
    ("Phone", "+1415555", "phone"),
    ("priority", "0", "priority"),
    ("timezone", "Mars/Olympus_Mons", "timezone"),
    ("payload", '{"row": not json', "payload"),
    ("max_attempts", "21", "max_attempts"),
    ("not_before", "tomorrow", "not_before"),
    ("template", "no-such-template", "template"),
    ("expires_at", "2020-01-01T00:00:00Z", "expires_at"),  # already past
]
TWIN = {"Phone": "+14155550199", "customer_name": "Twin", "payload": '{"twin": true}'}


def is_bad(i: int) -> bool:
    return i % 100 == 37


def is_twin(i: int) -> bool:
    return i % 10_000 == 4242


def row(i: int) -> dict[str, str]:
    """Row i of the file (line i + 2): deterministic, so a test can recompute any of it."""
    if is_twin(i):
        return {name: TWIN.get(name, "") for name in HEADER}
    cells = {
        "Phone": f"+1{AREA_CODES[i % 10]}555{(i // 10) % 10_000:04d}",
        "customer_name": "" if i % 7 == 0 else f'Zoë, "{i}"',
        "priority": "" if i % 10 == 0 else str(i % 10),
        "timezone": "America/Chicago" if i % 3 == 0 else "",
        "not_before": f"2031-01-0{1 + i % 5}T09:00:00Z" if i % 11 == 0 else "",
        "expires_at": "2032-06-01T00:00:00+02:00" if i % 13 == 0 else "",
        "max_attempts": str(1 + i % 20) if i % 4 == 0 else "",
        "merchant_id": f"m{i % 50}" if i % 2 == 0 else "",
        "payload": json.dumps({"row": i, "note": 'a,b "c"', "tags": [i % 3]}),
        "idempotency_key": f"ext-{i}" if i % 5 == 0 else "",
        "template": "alert" if i % 17 == 0 else "",
    }
    if is_bad(i):
        column, value, _ = BAD_KINDS[(i // 100) % len(BAD_KINDS)]
        cells[column] = value
    return cells


def bad_field(i: int) -> str:
    return BAD_KINDS[(i // 100) % len(BAD_KINDS)][2]


def expected_lead(i: int) -> dict[str, Any]:
    """The lead good row i must become (the fields the file sets, defaults applied)."""
    cells = row(i)

    def ts(text: str) -> dt.datetime | None:
        return dt.datetime.fromisoformat(text).astimezone(dt.UTC) if text else None

    return {
        "reseller_id": RESELLER,
        "phone": cells["Phone"],
        "customer_name": cells["customer_name"] or None,
        "priority": int(cells["priority"] or 5),
        "timezone": cells["timezone"] or AREAS[cells["Phone"][2:5]],
        "not_before": ts(cells["not_before"]),
        "expires_at": ts(cells["expires_at"]),
        "max_attempts": int(cells["max_attempts"]) if cells["max_attempts"] else None,
        "merchant_id": cells["merchant_id"] or None,
        "payload": json.loads(cells["payload"]),
        "template": cells["template"] or TEMPLATE,
        "execution_mode": "telephony_alert" if cells["template"] == "alert" else "telephony",
        "status": "BACKLOG",
    }


def write_csv(path: Path, indexes: range) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, HEADER)
        writer.writeheader()
        for i in indexes:
            writer.writerow(row(i))


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("import") / "leads.csv"
    write_csv(path, range(N_ROWS))
    return path


@pytest.fixture(scope="module")
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, row_factory=dict_row, autocommit=True) as c:
        c.execute(
            "INSERT INTO templates (name, calling_window, retry, frequency_cap, execution_mode)"
            " SELECT %s, calling_window, retry, frequency_cap, execution_mode"
            " FROM templates WHERE name = 'default'",
            (TEMPLATE,),
        )
        yield c


@pytest.fixture(autouse=True)
def _empty(conn: psycopg.Connection) -> None:
    conn.execute("TRUNCATE leads, lead_events, call_attempts RESTART IDENTITY CASCADE")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures logging onto CliRunner's streams, which close after it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level
    structlog.reset_defaults()


def lead_keys(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute("SELECT idempotency_key FROM leads ORDER BY idempotency_key").fetchall()
    return [r["idempotency_key"] for r in rows]


def read_rejects(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_100k_rows_then_killed_halfway_and_rerun(
    conn: psycopg.Connection, database_url: str, big_csv: Path, tmp_path: Path
) -> None:
    good = [i for i in range(N_ROWS) if not is_bad(i)]
    assert len(good) == 99_000

    # --- a clean import, called directly ---
    report = importer.import_csv(
        database_url, big_csv, reseller=RESELLER, template=TEMPLATE, workers=2
    )
    print(f"\n100k import: {report.elapsed_s:.1f} s, {report.rows_per_s:,.0f} rows/s")
    assert (report.rows, report.created, report.duplicates, report.rejected) == (
        N_ROWS,
        99_000,
        0,
        1_000,
    )

    # Aggregates over all leads, recomputed from the generator.
    expected = [expected_lead(i) for i in good]
    agg = conn.execute(
        """
        SELECT count(*) AS n,
               count(DISTINCT idempotency_key) AS keys,
               count(*) FILTER (WHERE idempotency_key LIKE 'ext-%%') AS explicit_keys,
               count(*) FILTER (WHERE idempotency_key ~ '^import:[0-9a-f]{32}$') AS derived_keys,
               count(*) FILTER (WHERE reseller_id = %(reseller)s AND status = 'BACKLOG') AS ok,
               sum(priority) AS priority,
               count(*) FILTER (WHERE timezone = 'America/Chicago') AS chicago,
               count(merchant_id) AS merchants,
               sum(max_attempts) AS max_attempts,
               count(*) FILTER (WHERE template = 'alert') AS alert,
               count(not_before) AS not_before,
               count(expires_at) AS expires_at,
               count(customer_name) AS named,
               count(*) FILTER (WHERE next_attempt_at >= not_before) AS waits
        FROM leads
        """,
        {"reseller": RESELLER},
    ).fetchone()
    assert agg == {
        "n": 99_000,
        "keys": 99_000,
        "explicit_keys": sum(1 for i in good if i % 5 == 0 and not is_twin(i)),
        "derived_keys": sum(1 for i in good if i % 5 or is_twin(i)),
        "ok": 99_000,
        "priority": sum(e["priority"] for e in expected),
        "chicago": sum(1 for e in expected if e["timezone"] == "America/Chicago"),
        "merchants": sum(1 for e in expected if e["merchant_id"]),
        "max_attempts": sum(e["max_attempts"] or 0 for e in expected),
        "alert": sum(1 for e in expected if e["template"] == "alert"),
        "not_before": sum(1 for e in expected if e["not_before"]),
        "expires_at": sum(1 for e in expected if e["expires_at"]),
        "named": sum(1 for e in expected if e["customer_name"]),
        "waits": sum(1 for e in expected if e["not_before"]),
    }

    # Every lead, field by field, against the row it came from.
    fields = [f for f in expected_lead(0) if f != "payload"]
    stored = conn.execute(f"SELECT payload, idempotency_key, {', '.join(fields)} FROM leads")
    by_row: dict[int, dict[str, Any]] = {}
    twins: list[dict[str, Any]] = []
    for lead in stored.fetchall():
        if lead["payload"] == {"twin": True}:
            twins.append(lead)
        else:
            assert lead["payload"]["row"] not in by_row, "two leads from one row"
            by_row[lead["payload"]["row"]] = lead
    non_twins = [i for i in good if not is_twin(i)]
    assert sorted(by_row) == non_twins
    for i in non_twins:
        lead = by_row[i]
        want = expected_lead(i)
        assert {k: lead[k] for k in want} == want, i
        key = lead["idempotency_key"]
        assert key == f"ext-{i}" if i % 5 == 0 else key.startswith("import:"), (i, key)
    # Ten identical rows are ten leads, each with its own derived key.
    assert len(twins) == 10
    assert len({t["idempotency_key"] for t in twins}) == 10
    assert all(t["phone"] == "+14155550199" and t["customer_name"] == "Twin" for t in twins)

    # Spot checks, the whole row.
    for i in (1, 11, 13, 17, 20, 33, 99_999):
        lead = conn.execute(
            "SELECT * FROM leads WHERE (payload->>'row')::int = %s", (i,)
        ).fetchone()
        assert lead is not None, i
        want = expected_lead(i)
        assert {k: lead[k] for k in want} == want
        assert lead["attempt_count"] == 0 and lead["outcome"] is None
        assert lead["next_attempt_at"] >= (want["not_before"] or lead["created_at"])
        events = conn.execute(
            "SELECT from_status, to_status, reason FROM lead_events WHERE lead_id = %s",
            (lead["id"],),
        ).fetchall()
        assert events == [{"from_status": None, "to_status": "BACKLOG", "reason": "created"}]
    row_11 = by_row[11]
    assert row_11["not_before"] == dt.datetime(2031, 1, 2, 9, tzinfo=dt.UTC)
    assert row_11["phone"].startswith("+1212") and row_11["timezone"] == "America/New_York"
    assert by_row[13]["expires_at"] == dt.datetime(2032, 5, 31, 22, tzinfo=dt.UTC)

    # The rejects: exactly the 1,000 bad rows, original cells, reasons naming the field.
    header, rejects = read_rejects(importer.default_rejects_path(big_csv))
    assert header == [*HEADER, "line", "reason"]
    bad = [i for i in range(N_ROWS) if is_bad(i)]
    assert [int(r["line"]) for r in rejects] == [i + 2 for i in bad]
    for i, reject in zip(bad, rejects, strict=True):
        assert {k: reject[k] for k in HEADER} == row(i)
        assert reject["reason"].startswith(f"{bad_field(i)}: "), (i, reject["reason"])
    clean_keys = lead_keys(conn)

    # --- a copy, imported into an empty state by a process killed halfway ---
    conn.execute("TRUNCATE leads, lead_events RESTART IDENTITY CASCADE")
    copy = tmp_path / "copy of leads.csv"
    shutil.copy(big_csv, copy)
    rejects_path = tmp_path / "copy.rejects.csv"
    args = [
        "import", str(copy), "--reseller", RESELLER, "--template", TEMPLATE, "--batch", "1000",
        "--workers", "2", "--rejects", str(rejects_path), "--database-url", database_url,
    ]  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, "-m", "dispatcher.cli", *args],
        cwd=ROOT,
        env={**os.environ, "SWITCHBOARD_LOG_LEVEL": "WARNING"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its process group: the importer and its workers
    )
    deadline = time.monotonic() + 60
    try:
        while conn.execute("SELECT count(*) AS n FROM leads").fetchone()["n"] < 45_000:
            assert child.poll() is None, "the importer ended before it could be killed"
            assert time.monotonic() < deadline, "the importer made no progress"
            time.sleep(0.02)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    time.sleep(0.2)
    killed_at = conn.execute("SELECT count(*) AS n FROM leads").fetchone()["n"]
    assert 45_000 <= killed_at < 99_000, killed_at

    # --- rerun to completion, through the CLI ---
    result = run_cli(
        "import", str(copy), "--reseller", RESELLER, "--template", TEMPLATE,
        "--rejects", str(rejects_path), "--workers", "2", "--database-url", database_url,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    created = 99_000 - killed_at
    assert f"{created:,}" in result.stdout and f"{killed_at:,}" in result.stdout
    assert lead_keys(conn) == clean_keys  # same leads, no duplicates
    dupes = conn.execute(
        "SELECT count(*) AS n FROM (SELECT payload FROM leads GROUP BY payload"
        " HAVING count(*) > 1 AND payload <> '{\"twin\": true}') d"
    ).fetchone()
    assert dupes["n"] == 0
    _, rerun_rejects = read_rejects(rejects_path)
    assert [int(r["line"]) for r in rerun_rejects] == [i + 2 for i in bad]


def test_rerun_and_edited_file_create_only_new_rows(
    conn: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "small.csv"
    write_csv(path, range(300))
    first = importer.import_csv(database_url, path, reseller=RESELLER, template=TEMPLATE)
    assert (first.created, first.duplicates, first.rejected) == (297, 0, 3)
    keys = lead_keys(conn)

    # The same file again: nothing new, the rejects file rewritten, not appended.
    again = importer.import_csv(database_url, path, reseller=RESELLER, template=TEMPLATE)
    assert (again.created, again.duplicates, again.rejected) == (0, 297, 3)
    assert lead_keys(conn) == keys
    assert len(read_rejects(importer.default_rejects_path(path))[1]) == 3

    # Edited: a new row on top, one row removed, the bad rows fixed. Line numbers all
    # moved; only the new row and the fixed ones are created.
    rows = [row(i) for i in range(300) if i != 5]
    for cells in rows:
        if cells["priority"] == "0":
            cells["priority"] = "3"
        if cells["Phone"] == "+1415555":
            cells["Phone"] = "+14155550000"
        if cells["timezone"].startswith("Mars/"):
            cells["timezone"] = ""
    new_row = {**row(1), "payload": '{"row": -1}'}
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, HEADER)
        writer.writeheader()
        writer.writerows([new_row, *rows])
    edited = importer.import_csv(database_url, path, reseller=RESELLER, template=TEMPLATE)
    assert (edited.created, edited.duplicates, edited.rejected) == (4, 296, 0)
    assert read_rejects(importer.default_rejects_path(path)) == ([*HEADER, "line", "reason"], [])
    assert conn.execute("SELECT count(*) AS n FROM leads").fetchone()["n"] == 301

    # Another reseller's import of the same file is its own set of leads.
    other = importer.import_csv(database_url, path, reseller="other", template=TEMPLATE)
    assert other.created == 300


def test_conflicts_surplus_cells_and_fatal_errors(
    conn: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "odd.csv"
    path.write_text(
        "phone,idempotency_key,payload,line,reason\n"
        "+14155550100,k1,,7,old reason\n"
        "+14155550101,k1,,,\n"  # the same key, another body: a conflict
        '+14155550102,,"{""a"": NaN}",,\n'
        "+14155550103,,,,,surplus\n"
        '+14155550104,,"[1, 2]",,\n',
        encoding="utf-8",
    )
    report = importer.import_csv(database_url, path, reseller=RESELLER, template=TEMPLATE)
    assert (report.created, report.rejected) == (1, 4)
    header, rejects = read_rejects(importer.default_rejects_path(path))
    assert header == ["phone", "idempotency_key", "payload", "line", "reason"]
    reasons = {int(r["line"]): r["reason"] for r in rejects}
    assert reasons.keys() == {3, 4, 5, 6}
    assert reasons[3].startswith("idempotency_key")
    assert reasons[4].startswith("payload: is not valid JSON")
    assert reasons[5].startswith("row: has 1 more cell")
    assert reasons[6] == "payload: must be a JSON object"

    for content, message in [
        ("name,phone\nx,+14155550100\n", "unknown column(s) 'name'"),
        ("customer_name\nx\n", "no 'phone' column"),
        ("phone,reseller_id\n+14155550100,x\n", "reseller_id"),
        ("", "the file is empty"),
    ]:
        path.write_text(content, encoding="utf-8")
        result = run_cli(
            "import", str(path), "--reseller", RESELLER, "--template", TEMPLATE,
            "--database-url", database_url,
        )  # fmt: skip
        assert result.exit_code == 1, content
        assert message in result.stderr, result.stderr
    path.write_text("phone\n+14155550100\n", encoding="utf-8")
    result = run_cli(
        "import", str(path), "--reseller", RESELLER, "--template", "nope",
        "--database-url", database_url,
    )  # fmt: skip
    assert result.exit_code == 1 and "no template named 'nope'" in result.stderr
    assert conn.execute("SELECT count(*) AS n FROM leads").fetchone()["n"] == 1
