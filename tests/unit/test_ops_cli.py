"""`switchboard ops` without a database: argument parsing (the optional `--watch` value),
JSON and table output, and the watch loop, on canned rows.

The same commands against a seeded PostgreSQL are in tests/integration/test_ops_views.py.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
from typer.testing import CliRunner

from dispatcher import ops_cli
from dispatcher.cli import app
from dispatcher.ops_cli import Query, Result

AT = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
ROWS = [
    {
        "number_id": 1,
        "number": "+15550000001",
        "paused": False,
        "in_flight": 3,
        "utilisation_pct": Decimal("75.0"),
        "cps_limit": Decimal("2"),
        "since": AT,
        "attempt_id": uuid.UUID(int=7),
        "error": "sip 486 [bold]busy[/bold]",
        "sample_lead_ids": [11, 10],
        "reseller_id": None,
    }
]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["status"], ["status"]),
        (["status", "--watch"], ["status", "--watch", "2.0"]),
        (["status", "--watch", "5"], ["status", "--watch", "5"]),
        (["status", "--watch", "0.5", "--json"], ["status", "--watch", "0.5", "--json"]),
        (["status", "--watch", "--json"], ["status", "--watch", "2.0", "--json"]),
        (["timeline", "7", "--watch"], ["timeline", "7", "--watch", "2.0"]),
        (["status", "--watch=3"], ["status", "--watch=3"]),
        (["status", "--", "--watch"], ["status", "--", "--watch"]),
    ],
)
def test_a_bare_watch_gets_the_default_interval(args: list[str], expected: list[str]) -> None:
    assert ops_cli.default_watch_value(args) == expected


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What each command asked `_run` for, instead of connecting."""
    seen: list[dict[str, Any]] = []

    def run(
        database_url: str | None,
        queries: Sequence[Query],
        as_json: bool,
        watch: float | None,
        *,
        if_empty: str | None = None,
    ) -> None:
        seen.append(
            {"url": database_url, "queries": list(queries), "json": as_json, "watch": watch}
        )

    monkeypatch.setattr(ops_cli, "_run", run)
    return seen


@pytest.mark.parametrize(
    ("args", "json_", "watch"),
    [
        (["status"], False, None),
        (["status", "--watch"], False, 2.0),
        (["status", "--json", "--watch", "5"], True, 5.0),
        (["channels", "--watch", "--json"], True, 2.0),
        (["failures", "--watch=0.5"], False, 0.5),
    ],
)
def test_options_reach_the_command(
    calls: list[dict[str, Any]], args: list[str], json_: bool, watch: float | None
) -> None:
    result = CliRunner().invoke(app, ["ops", *args, "--database-url", "postgresql://x/y"])
    assert result.exit_code == 0, result.output
    assert calls == [
        {"url": "postgresql://x/y", "queries": calls[0]["queries"], "json": json_, "watch": watch}
    ]


def test_each_command_reads_its_view(calls: list[dict[str, Any]]) -> None:
    runner = CliRunner()
    for args in (["status"], ["stuck"], ["channels"], ["failures"], ["timeline", "42"]):
        assert runner.invoke(app, ["ops", *args]).exit_code == 0
    assert [[(q.name, q.sql, q.params) for q in c["queries"]] for c in calls] == [
        [
            ("queue_depth", "SELECT * FROM ops.queue_depth", None),
            ("due_backlog", "SELECT * FROM ops.due_backlog", None),
            ("due_backlog_total", "SELECT * FROM ops.due_backlog_total", None),
        ],
        [("stuck_leads", "SELECT * FROM ops.stuck_leads()", {})],
        [("channel_use", "SELECT * FROM ops.channel_use", None)],
        [("failures", "SELECT * FROM ops.failures", None)],
        [("lead_timeline", "SELECT * FROM ops.lead_timeline(%(id)s)", {"id": 42})],
    ]


def test_stuck_passes_only_the_thresholds_given(calls: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(app, ["ops", "stuck", "--dialing-s", "30", "--in-call-s", "600"])
    assert result.exit_code == 0, result.output
    (query,) = calls[0]["queries"]
    assert query.sql == (
        "SELECT * FROM ops.stuck_leads(dialing_s => %(dialing_s)s, in_call_s => %(in_call_s)s)"
    )
    assert query.params == {"dialing_s": 30.0, "in_call_s": 600.0}


@pytest.mark.parametrize("args", [["status", "--watch", "0"], ["timeline", "0"], ["timeline"]])
def test_bad_arguments_are_usage_errors(calls: list[dict[str, Any]], args: list[str]) -> None:
    result = CliRunner().invoke(app, ["ops", *args])
    assert result.exit_code == 2
    assert calls == []


def test_without_a_database_url_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    result = CliRunner().invoke(app, ["ops", "status"])
    assert result.exit_code == 2
    assert "DATABASE_URL is not set" in result.output


def test_json_keeps_types_readable() -> None:
    out = json.loads(ops_cli.to_json([Result("channel_use", list(ROWS[0]), ROWS)]))
    assert out == {
        "channel_use": [
            {
                "number_id": 1,
                "number": "+15550000001",
                "paused": False,
                "in_flight": 3,
                "utilisation_pct": 75.0,
                "cps_limit": 2,
                "since": "2026-01-02T03:04:05.678000+00:00",
                "attempt_id": "00000000-0000-0000-0000-000000000007",
                "error": "sip 486 [bold]busy[/bold]",
                "sample_lead_ids": [11, 10],
                "reseller_id": None,
            }
        ]
    }
    assert isinstance(out["channel_use"][0]["cps_limit"], int)
    with pytest.raises(TypeError):
        ops_cli.to_json([Result("x", ["v"], [{"v": object()}])])


def _fetcher(frames: list[list[Result]]) -> tuple[ops_cli.Fetch, list[int]]:
    """A fetch returning `frames` in turn (the last one repeats), and its call count."""
    count = [0]

    def fetch(queries: Sequence[Query]) -> list[Result]:
        count[0] += 1
        return frames[min(count[0], len(frames)) - 1]

    return fetch, count


@pytest.fixture()
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")


def _table_cells(output: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.split("│")[1:-1]] for line in output.splitlines() if "│" in line
    ]


def test_the_table_shows_every_value_as_text(
    capsys: pytest.CaptureFixture[str], wide: None
) -> None:
    fetch, _ = _fetcher([[Result("channel_use", list(ROWS[0]), ROWS), Result("empty", ["a"], [])]])
    ops_cli.show(fetch, [], as_json=False, watch=None)
    out = capsys.readouterr().out
    assert "ops.channel_use" in out and "ops.empty" in out and "(no rows)" in out
    assert _table_cells(out) == [
        [
            "1",
            "+15550000001",
            "no",
            "3",
            "75.0",
            "2",
            "2026-01-02 03:04:05.678+00:00",
            "00000000-0000-0000-0000-000000000007",
            "sip 486 [bold]busy[/bold]",  # printed, not read as markup
            "11, 10",
            "-",
        ]
    ]


def test_watch_prints_json_lines_until_ctrl_c(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = [[Result("v", ["n"], [{"n": n}])] for n in (1, 2, 3)]
    fetch, count = _fetcher(frames)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(ops_cli.time, "sleep", sleep)
    ops_cli.show(fetch, [], as_json=True, watch=0.5)
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"v": [{"n": 1}]},
        {"v": [{"n": 2}]},
        {"v": [{"n": 3}]},
    ]
    assert sleeps == [0.5, 0.5, 0.5] and count == [3]


def test_watch_refreshes_the_live_table_until_ctrl_c(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], wide: None
) -> None:
    frames = [[Result("v", ["n"], [{"n": n}])] for n in (111, 222)]
    fetch, count = _fetcher(frames)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ops_cli.time, "sleep", sleep)
    ops_cli.show(fetch, [], as_json=False, watch=2.0)
    out = capsys.readouterr().out
    assert count == [2] and sleeps == [2.0, 2.0]
    # Not a terminal: rich prints the last frame only.
    assert "every 2 s, Ctrl-C stops" in out
    assert _table_cells(out) == [["222"]]
