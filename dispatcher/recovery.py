"""`switchboard recover`: bring FAILED / EXPIRED leads back after an outage, carefully.

Three steps, the first two read-only: analyse (the matching leads grouped by status,
outcome and their last attempt's error, so an operator sees *why* they ended before
choosing what to retry), list (exactly the leads a re-queue would touch), and only with
`--execute`, re-queue them through `lifecycle.requeue` - the one audited way out of those
final states (status BACKLOG, a `lead_events` row `recovered`, more attempts allowed).

The id set is selected once, up front and ordered, so a run never touches a lead twice,
and the leads re-queued are exactly the ones listed: each batch (one transaction) first
locks the listed leads that are still in the state the listing showed (same status and
`updated_at`); a lead that changed in between - dialed, cancelled, recovered by another
run - is reported as skipped, never re-queued on stale information. A dry run opens its
transaction READ ONLY, so the database itself guarantees it changes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from psycopg import Connection

RECOVERABLE = ("FAILED", "EXPIRED")
DEFAULT_BATCH = 500
MAX_EXTRA_ATTEMPTS = 20  # the schema's ceiling of max_attempts
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class RecoverError(ValueError):
    """A filter the command refuses (exit 1 before anything is read or changed)."""


def parse_duration(text: str) -> dt.timedelta:
    """'30m', '24h', '7d' (also s and w) → a timedelta; RecoverError otherwise."""
    match = _DURATION.match(text)
    if not match or int(match.group(1)) <= 0:
        raise RecoverError(f"--since must be a duration like 30m, 24h or 7d, not {text!r}")
    return dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class Filters:
    statuses: tuple[str, ...] = RECOVERABLE
    outcomes: tuple[str, ...] = ()  # empty: any outcome (also none)
    since: dt.timedelta | None = None
    reseller: str | None = None
    limit: int | None = None

    def check(self) -> None:
        from db.models import OUTCOMES

        if not self.statuses or not set(self.statuses) <= set(RECOVERABLE):
            raise RecoverError(f"--status must be one of {', '.join(RECOVERABLE)}")
        bad = sorted(set(self.outcomes) - set(OUTCOMES))
        if bad:
            raise RecoverError(f"unknown outcome(s) {', '.join(bad)}; one of {', '.join(OUTCOMES)}")
        if self.limit is not None and self.limit < 1:
            raise RecoverError("--limit must be at least 1")

    def as_json(self) -> dict[str, Any]:
        return {
            "statuses": list(self.statuses),
            "outcomes": list(self.outcomes),
            "since_s": self.since.total_seconds() if self.since else None,
            "reseller": self.reseller,
            "limit": self.limit,
        }


@dataclass(frozen=True)
class Candidate:
    id: int
    reseller_id: str
    phone: str
    status: str
    outcome: str | None
    last_error: str | None
    attempt_count: int
    updated_at: dt.datetime


@dataclass(frozen=True)
class Group:
    status: str
    outcome: str | None
    last_error: str | None
    leads: int


@dataclass
class Report:
    filters: Filters
    candidates: list[Candidate]
    groups: list[Group]
    executed: bool = False
    requeued: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # changed since they were selected


def select(conn: Connection, filters: Filters) -> list[Candidate]:
    """The leads matching `filters`, in id order, each with its last attempt's error."""
    clauses = ["l.status = ANY(%(statuses)s)"]
    params: dict[str, Any] = {"statuses": list(filters.statuses)}
    if filters.outcomes:
        clauses.append("l.outcome = ANY(%(outcomes)s)")
        params["outcomes"] = list(filters.outcomes)
    if filters.since is not None:
        clauses.append("l.updated_at >= now() - %(since)s")
        params["since"] = filters.since
    if filters.reseller is not None:
        clauses.append("l.reseller_id = %(reseller)s")
        params["reseller"] = filters.reseller
    limit = ""
    if filters.limit is not None:
        limit = "LIMIT %(limit)s"
        params["limit"] = filters.limit
    rows = conn.execute(
        f"""
        SELECT l.id, l.reseller_id, l.phone, l.status, l.outcome, l.attempt_count,
               l.updated_at, a.error AS last_error
        FROM leads l
        LEFT JOIN LATERAL (
            SELECT error FROM call_attempts WHERE lead_id = l.id
            ORDER BY attempt_no DESC LIMIT 1
        ) a ON true
        WHERE {" AND ".join(clauses)}
        ORDER BY l.id
        {limit}
        """,
        params,
    ).fetchall()
    return [Candidate(**row) for row in rows]


def group(candidates: Sequence[Candidate]) -> list[Group]:
    """Counts by (status, outcome, last error), largest first."""
    counts: dict[tuple[str, str | None, str | None], int] = {}
    for c in candidates:
        key = (c.status, c.outcome, c.last_error)
        counts[key] = counts.get(key, 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], *(str(x) for x in kv[0])))
    return [Group(*key, leads=n) for key, n in ordered]


def analyse(database_url: str, filters: Filters) -> Report:
    """Select and group, in a READ ONLY transaction: the dry run."""
    from db.pool import connect

    filters.check()
    with connect(database_url) as conn:
        conn.read_only = True
        try:
            candidates = select(conn, filters)
        finally:
            conn.rollback()
    return Report(filters, candidates, group(candidates))


def execute(
    database_url: str, report: Report, extra_attempts: int = 1, batch: int = DEFAULT_BATCH
) -> Report:
    """Re-queue the report's candidates, `batch` per transaction, skipping any that
    changed since they were selected."""
    from db.pool import connect
    from dispatcher import lifecycle

    if not 1 <= extra_attempts <= MAX_EXTRA_ATTEMPTS:
        raise RecoverError(f"--extra-attempts must be between 1 and {MAX_EXTRA_ATTEMPTS}")
    report.executed = True
    with connect(database_url) as conn:
        for start in range(0, len(report.candidates), batch):
            chunk = report.candidates[start : start + batch]
            with conn.transaction():
                unchanged = [
                    r["id"]
                    for r in conn.execute(
                        """
                        SELECT l.id FROM leads l
                        JOIN unnest(%s::bigint[], %s::text[], %s::timestamptz[])
                            AS s(id, status, updated_at)
                          ON s.id = l.id AND s.status = l.status AND s.updated_at = l.updated_at
                        ORDER BY l.id
                        FOR UPDATE OF l
                        """,
                        (
                            [c.id for c in chunk],
                            [c.status for c in chunk],
                            [c.updated_at for c in chunk],
                        ),
                    ).fetchall()
                ]
                done = set(lifecycle.requeue(conn, unchanged, extra_attempts))
            report.requeued.extend(c.id for c in chunk if c.id in done)
            report.skipped.extend(c.id for c in chunk if c.id not in done)
    import structlog

    structlog.get_logger(__name__).info(
        "leads_recovered",
        requeued=len(report.requeued),
        skipped=len(report.skipped),
        extra_attempts=extra_attempts,
        filters=report.filters.as_json(),
    )
    return report


# --- output -----------------------------------------------------------------------------


def report_json(report: Report) -> dict[str, Any]:
    from dispatcher.logs import mask_phone

    out: dict[str, Any] = {
        "mode": "execute" if report.executed else "dry_run",
        "filters": report.filters.as_json(),
        "groups": [
            {"status": g.status, "outcome": g.outcome, "last_error": g.last_error, "leads": g.leads}
            for g in report.groups
        ],
        "leads": [
            {
                "id": c.id,
                "reseller_id": c.reseller_id,
                "phone": mask_phone(c.phone),
                "status": c.status,
                "outcome": c.outcome,
                "last_error": c.last_error,
                "updated_at": c.updated_at.isoformat(),
            }
            for c in report.candidates
        ],
    }
    if report.executed:
        out["requeued"] = report.requeued
        out["skipped"] = report.skipped
    return out


def print_report(console: Console, report: Report) -> None:
    from dispatcher.logs import mask_phone

    n = len(report.candidates)
    if not n:
        console.print("no leads match these filters")
        return
    groups = Table(title=f"{n:,} matching lead(s) by status, outcome and last error")
    for name in ("status", "outcome", "last attempt's error"):
        groups.add_column(name)
    groups.add_column("leads", justify="right")
    for g in report.groups:
        groups.add_row(g.status, g.outcome or "-", g.last_error or "-", f"{g.leads:,}")
    console.print(groups)
    leads = Table(
        title="leads re-queued (as they were selected)"
        if report.executed
        else "leads that would be re-queued"
    )
    for name in ("id", "reseller", "phone", "status", "outcome", "updated_at"):
        leads.add_column(name, justify="right" if name == "id" else "left")
    skipped = set(report.skipped)
    for c in report.candidates:
        leads.add_row(
            str(c.id),
            c.reseller_id,
            mask_phone(c.phone),
            c.status,
            c.outcome or "-",
            c.updated_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
            style="dim strike" if c.id in skipped else None,
        )
    console.print(leads)
    if report.executed:
        console.print(
            f"[green]re-queued {len(report.requeued):,}[/] lead(s);"
            f" skipped {len(report.skipped):,} that changed since they were selected"
            + (f": {', '.join(map(str, report.skipped))}" if report.skipped else "")
        )
    else:
        console.print(f"dry run: nothing changed; pass --execute to re-queue these {n:,} lead(s)")


# --- the command ------------------------------------------------------------------------


def recover_command(
    outcome: Annotated[
        list[str] | None, typer.Option("--outcome", help="last call's outcome; repeatable")
    ] = None,
    status: Annotated[
        list[str] | None, typer.Option("--status", help="FAILED or EXPIRED [default: both]")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="updated within, e.g. 30m, 24h, 7d")
    ] = None,
    reseller: Annotated[str | None, typer.Option("--reseller")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="at most N leads")] = None,
    extra_attempts: Annotated[
        int,
        typer.Option("--extra-attempts", min=1, max=MAX_EXTRA_ATTEMPTS, help="calls allowed"),
    ] = 1,
    do_execute: Annotated[
        bool, typer.Option("--execute", help="re-queue them (default: dry run)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document on stdout")] = False,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="env DATABASE_URL")
    ] = None,
) -> None:
    """Analyse FAILED / EXPIRED leads and, with --execute, re-queue them (audited)."""
    from dispatcher import logs
    from dispatcher.settings import Settings

    settings = Settings.load(database_url=database_url)
    logs.configure(settings.log_level, settings.log_json)
    out, err = Console(), Console(stderr=True)
    try:
        if not settings.database_url:
            raise RecoverError("DATABASE_URL is not set (or pass --database-url)")
        filters = Filters(
            statuses=tuple(s.upper() for s in status) if status else RECOVERABLE,
            outcomes=tuple(o.lower() for o in outcome or ()),
            since=parse_duration(since) if since else None,
            reseller=reseller,
            limit=limit,
        )
        report = analyse(settings.database_url, filters)
        if do_execute:
            execute(settings.database_url, report, extra_attempts)
    except RecoverError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except Exception as exc:
        from psycopg import Error as DatabaseError

        if not isinstance(exc, DatabaseError):
            raise
        err.print(f"[red]database error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(report_json(report), indent=2))
    else:
        print_report(out, report)
