"""`switchboard ops ...`: the `ops` schema's views in a terminal, or as JSON for scripts.

The SQL lives in the views (db/migrations/versions/0002_ops_views.py, ops/QUERIES.md),
so psql, Grafana and this command show the same numbers; this module only fetches and
prints. The connection is read-only: an operator's status command never writes.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand

from dispatcher.settings import Settings

if TYPE_CHECKING:
    from psycopg import Connection

ops_app = typer.Typer(
    help="Operators' views: queue, stuck leads, channels, failures, one lead's timeline.",
    no_args_is_help=True,
)

DEFAULT_WATCH_S = 2.0


@dataclass(frozen=True)
class Query:
    """One view or function call to print, under the name its JSON output uses."""

    name: str
    sql: str
    params: dict[str, Any] | None = None


@dataclass(frozen=True)
class Result:
    """A query's rows, with its column names for the table of a query without rows."""

    name: str
    columns: list[str]
    rows: list[dict[str, Any]]


Fetch = Callable[[Sequence[Query]], list[Result]]


class _WatchCommand(TyperCommand):
    """Lets `--watch` take an optional value (`--watch`, `--watch 5`, `--watch=5`); Typer
    options always require one, so a bare `--watch` gets the default inserted."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, default_watch_value(args))


def default_watch_value(args: Sequence[str]) -> list[str]:
    """`args` with DEFAULT_WATCH_S after each `--watch` not followed by a number (up to a
    `--`, after which nothing is an option)."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + list(args[i:])
        out.append(arg)
        if arg == "--watch" and not (i + 1 < len(args) and _is_number(args[i + 1])):
            out.append(str(DEFAULT_WATCH_S))
    return out


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


DatabaseOpt = Annotated[str | None, typer.Option("--database-url", help="env DATABASE_URL")]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="print the rows as JSON on stdout (one line per refresh)")
]
WatchOpt = Annotated[
    float | None,
    typer.Option(
        "--watch",
        metavar="[SECONDS]",
        min=0.1,
        help=f"refresh every SECONDS (default {DEFAULT_WATCH_S:g}) until Ctrl-C",
    ),
]


# --- fetching ------------------------------------------------------------------------


@contextmanager
def _connection(database_url: str | None) -> Iterator[Connection]:
    from db.pool import connect

    url = Settings.load(database_url=database_url).database_url
    if not url:
        raise typer.BadParameter("DATABASE_URL is not set", param_hint="--database-url")
    conn = connect(url, autocommit=True)
    try:
        conn.execute("SET default_transaction_read_only = on")
        conn.execute("SET statement_timeout = '30s'")
        yield conn
    finally:
        conn.close()


def fetch_from(conn: Connection) -> Fetch:
    """A Fetch on one connection, reused by every refresh of --watch."""

    def fetch(queries: Sequence[Query]) -> list[Result]:
        results = []
        for q in queries:
            cur = conn.execute(q.sql, q.params)
            columns = [c.name for c in cur.description or []]
            results.append(Result(q.name, columns, cur.fetchall()))
        return results

    return fetch


# --- printing ------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """JSON for the types PostgreSQL returns here: numerics as numbers, times as ISO."""
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(results: Sequence[Result]) -> str:
    return json.dumps({r.name: r.rows for r in results}, default=jsonable)


def _cell(value: Any) -> Text:
    # Text, not str: a value such as an error "[sip 486]" must not be read as rich markup.
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, dt.datetime):
        return Text(value.isoformat(sep=" ", timespec="milliseconds"))
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, list):
        return Text(", ".join(str(v) for v in value))
    return Text(str(value))


def render(results: Sequence[Result]) -> RenderableType:
    """One table per result under its view's name (a line of its own: a table title would
    wrap to the table's width)."""
    parts: list[RenderableType] = []
    for r in results:
        parts.append(Text(f"ops.{r.name}", style="bold"))
        table = Table()
        for col in r.columns:
            numeric = any(
                isinstance(row[col], int | float | Decimal) and not isinstance(row[col], bool)
                for row in r.rows
            )
            table.add_column(col, justify="right" if numeric else "left", overflow="fold")
        for row in r.rows:
            table.add_row(*(_cell(row[c]) for c in r.columns))
        parts.append(table)
        if not r.rows:
            parts.append(Text("(no rows)", style="dim"))
    return Group(*parts)


def show(fetch: Fetch, queries: Sequence[Query], *, as_json: bool, watch: float | None) -> None:
    """Print once, or every `watch` seconds until Ctrl-C (a live table; JSON lines)."""
    console = Console(soft_wrap=False)
    if watch is None:
        results = fetch(queries)
        if as_json:
            sys.stdout.write(to_json(results) + "\n")
        else:
            console.print(render(results))
        return
    try:
        if as_json:
            while True:
                sys.stdout.write(to_json(fetch(queries)) + "\n")
                sys.stdout.flush()
                time.sleep(watch)
        else:

            def frame() -> RenderableType:
                stamp = Text(
                    f"{time.strftime('%H:%M:%S')}, every {watch:g} s, Ctrl-C stops", style="dim"
                )
                return Group(stamp, render(fetch(queries)))

            with Live(frame(), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(watch)
                    live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        pass


def _run(
    database_url: str | None,
    queries: Sequence[Query],
    as_json: bool,
    watch: float | None,
    *,
    if_empty: str | None = None,
) -> None:
    """Connect, print, and turn database errors into one line and exit status 1;
    `if_empty` is the error when the first query has no rows (a lead that does not exist)."""
    import psycopg

    try:
        with _connection(database_url) as conn:
            fetch = fetch_from(conn)
            if if_empty is not None and not fetch(queries[:1])[0].rows:
                typer.echo(f"error: {if_empty}", err=True)
                raise typer.Exit(1)
            show(fetch, queries, as_json=as_json, watch=watch)
    except (psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedTable) as exc:
        hint = "is the database migrated? (switchboard migrate)"
        typer.echo(f"error: {str(exc).strip()}; {hint}", err=True)
        raise typer.Exit(1) from None
    except psycopg.Error as exc:
        typer.echo(f"error: {str(exc).strip()}", err=True)
        raise typer.Exit(1) from None


# --- commands ------------------------------------------------------------------------


STATUS_QUERIES = (
    Query("queue_depth", "SELECT * FROM ops.queue_depth"),
    Query("due_backlog", "SELECT * FROM ops.due_backlog"),
    Query("due_backlog_total", "SELECT * FROM ops.due_backlog_total"),
)


@ops_app.command(cls=_WatchCommand)
def status(
    database_url: DatabaseOpt = None, as_json: JsonOpt = False, watch: WatchOpt = None
) -> None:
    """Leads per reseller and status; what is due now and how late.

    ops.queue_depth, ops.due_backlog and ops.due_backlog_total."""
    _run(database_url, STATUS_QUERIES, as_json, watch)


def stuck_query(
    queued_s: float | None = None, dialing_s: float | None = None, in_call_s: float | None = None
) -> Query:
    """ops.stuck_leads(...) naming only the thresholds given; the function's own defaults
    stay the one definition of the others."""
    given = {"queued_s": queued_s, "dialing_s": dialing_s, "in_call_s": in_call_s}
    given = {k: v for k, v in given.items() if v is not None}
    args = ", ".join(f"{k} => %({k})s" for k in given)
    return Query("stuck_leads", f"SELECT * FROM ops.stuck_leads({args})", given)


@ops_app.command(cls=_WatchCommand)
def stuck(
    queued_s: Annotated[
        float | None, typer.Option("--queued-s", help="QUEUED this long past the lease [0]")
    ] = None,
    dialing_s: Annotated[
        float | None, typer.Option("--dialing-s", help="DIALING longer than this [60]")
    ] = None,
    in_call_s: Annotated[
        float | None, typer.Option("--in-call-s", help="IN_CALL longer than this [3600]")
    ] = None,
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
    watch: WatchOpt = None,
) -> None:
    """Leads that should have moved on: QUEUED past the lease, DIALING or IN_CALL too long.

    ops.stuck_leads(queued_s, dialing_s, in_call_s); unset thresholds keep their defaults."""
    _run(database_url, [stuck_query(queued_s, dialing_s, in_call_s)], as_json, watch)


@ops_app.command(cls=_WatchCommand)
def channels(
    database_url: DatabaseOpt = None, as_json: JsonOpt = False, watch: WatchOpt = None
) -> None:
    """Per outbound number: calls in flight against its channels, calls in the last 60 s.

    ops.channel_use."""
    _run(database_url, [Query("channel_use", "SELECT * FROM ops.channel_use")], as_json, watch)


@ops_app.command(cls=_WatchCommand)
def failures(
    database_url: DatabaseOpt = None, as_json: JsonOpt = False, watch: WatchOpt = None
) -> None:
    """FAILED and EXPIRED leads grouped by reason, outcome and last error.

    ops.failures: the first step of a recovery (which failures are worth a retry)."""
    _run(database_url, [Query("failures", "SELECT * FROM ops.failures")], as_json, watch)


@ops_app.command(cls=_WatchCommand)
def timeline(
    lead_id: Annotated[int, typer.Argument(metavar="LEAD_ID", min=1)],
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
    watch: WatchOpt = None,
) -> None:
    """One lead's status changes and calls in time order.

    ops.lead_timeline(LEAD_ID). Put LEAD_ID before a bare --watch, which would otherwise
    read it as SECONDS."""
    query = Query("lead_timeline", "SELECT * FROM ops.lead_timeline(%(id)s)", {"id": lead_id})
    _run(database_url, [query], as_json, watch, if_empty=f"lead {lead_id} has no history")
