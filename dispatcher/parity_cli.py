"""`switchboard parity report`: the parity of the shadow ZSET schedule with PostgreSQL's,
as Markdown, HTML or JSON, and an exit status a migration pipeline can gate on.

The report is computed by dispatcher.parity and rendered by dispatcher.parity_render; this
module parses the options, opens a read-only connection and writes the result.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown

from dispatcher.settings import Settings

parity_app = typer.Typer(
    help="Compare the shadow ZSET schedule with PostgreSQL's (shadow mode must be on).",
    no_args_is_help=True,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, now: dt.datetime, option: str) -> dt.datetime:
    """'24h', '30m', '7d' (that long before now) or an ISO datetime (UTC unless it names
    a zone); a BadParameter naming the option otherwise."""
    if match := _DURATION.match(text):
        seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
        return now - dt.timedelta(seconds=seconds)
    try:
        at = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"expected a duration like 1h, 24h, 7d or an ISO datetime, not {text!r}",
            param_hint=option,
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


@parity_app.command()
def report(
    since: Annotated[
        str | None, typer.Option(help="from: a duration before now (1h, 24h, 7d) or ISO time")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="to (excluded): a duration before now or ISO time")
    ] = None,
    reseller: Annotated[str | None, typer.Option(help="only this reseller's leads")] = None,
    fmt: Annotated[str, typer.Option("--format", help="md, html or json")] = "md",
    out: Annotated[Path | None, typer.Option(help="write to this file instead of stdout")] = None,
    fail_under: Annotated[
        float | None,
        typer.Option("--fail-under", min=0, max=100, help="exit 1 when parity (%) is below this"),
    ] = None,
    threshold_ms: Annotated[
        float, typer.Option("--threshold-ms", min=0, help="a pair further apart diverges")
    ] = 1000.0,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="env DATABASE_URL")
    ] = None,
) -> None:
    """Leads dispatched by both schedules or only one, the skew between them, order
    inversions, per reseller and per hour, every divergence classified by its cause, and
    the faults (Redis flushes, promoter pauses, failed dual writes); the verdict first."""
    import psycopg

    from db.pool import connect
    from dispatcher.parity import build_report
    from dispatcher.parity_render import FORMATS, render

    if fmt not in FORMATS:
        raise typer.BadParameter(f"one of {', '.join(FORMATS)}", param_hint="--format")
    now = dt.datetime.now(dt.UTC)
    start = parse_when(since, now, "--since") if since else None
    end = parse_when(until, now, "--until") if until else None
    if start and end and start >= end:
        raise typer.BadParameter("--since must be before --until", param_hint="--since")
    url = Settings.load(database_url=database_url).database_url
    if not url:
        raise typer.BadParameter("DATABASE_URL is not set", param_hint="--database-url")
    try:
        with connect(url, autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = on")
            result = build_report(conn, start, end, reseller, threshold_ms=threshold_ms)
    except psycopg.errors.UndefinedTable as exc:
        typer.echo(
            f"error: {str(exc).strip()}; is the database migrated? (switchboard migrate)", err=True
        )
        raise typer.Exit(1) from None
    except psycopg.Error as exc:
        typer.echo(f"error: {str(exc).strip()}", err=True)
        raise typer.Exit(1) from None

    text = render(result, fmt)
    if out is not None:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {out} ({result['verdict']['summary']})", err=True)
    else:
        console = Console()
        if fmt == "md" and console.is_terminal:
            console.print(Markdown(text))
        else:
            typer.echo(text, nl=False)
    parity = result["parity_pct"]
    if fail_under is not None and parity < fail_under:
        typer.echo(f"parity {parity:.3f} % is below --fail-under {fail_under:g} %", err=True)
        raise typer.Exit(1)
