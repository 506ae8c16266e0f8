"""`switchboard import`: a CSV of leads of any size, through the lead service, rerun-safe.

The file is streamed (csv.DictReader over a buffered reader, a few batches in memory at
most) and each batch of rows goes through `leads.create_many` in one transaction, so the
importer applies exactly the API's rules (validation, templates, do-not-call, idempotency)
and changes no status itself. Validation is CPU-bound (phone parsing dominates), so with
`--workers` > 1 the batches run in that many processes, each with its own connection; the
main process reads the file, derives the keys and writes the rejects in file order.

Every row gets an idempotency key, which is what makes an import safe to repeat:

* a row with an `idempotency_key` cell keeps it (the API's contract, per reseller);
* any other row gets `import:<hash>`, the hash of the row's normalised content (its lead
  columns, trimmed, blanks dropped, sorted by name, the payload re-encoded canonically)
  and of its *ordinal*: 1 for the first row with that content in the file, 2 for the
  second identical one, and so on.

So two identical rows in one file are two leads (a list may name a number twice on
purpose), yet a rerun - after a crash, a kill, or of the same file again, under any name -
derives the same keys for the same rows, and `create_many` answers them as duplicates.
Unlike a line number, the ordinal survives edits: fixing, removing, inserting or
reordering other rows changes no row's key, so re-importing a corrected file creates only
the rows that are new. The same content imported from two files is one lead (same key);
the key does not depend on `--template` (a rerun with another default template reports
the earlier rows as conflicts instead of calling those people twice). The ordinals cost
one 64-bit number per distinct row in memory (about 60 bytes); a collision of those only
makes an ordinal 2 instead of 1, never two rows share a key.

Rejected rows (field errors, key conflicts, JSON that does not parse, surplus cells) are
written with their original cells plus `line` (the file line the row ends on; the header
is line 1) and `reason` to a side file that each run rewrites; those two columns are
ignored on input, so a corrected side file can be imported as it is.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from psycopg import Connection

# The API's lead fields a CSV may carry; reseller_id comes from --reseller.
LEAD_COLUMNS = (
    "phone",
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
)
# Columns of a rejects file: ignored, so that a corrected rejects file imports as it is.
SIDE_COLUMNS = ("line", "reason")
KEY_PREFIX = "import:"
DEFAULT_BATCH = 5000
MAX_BATCH = 10_000  # leads.MAX_BULK, without importing the lead service at CLI start
_IN_FLIGHT_PER_WORKER = 2  # batches queued per worker: keeps them busy, bounds memory
_DEADLOCK_RETRIES = 5
# create_many logs one line per batch; during an import the progress bar and the final
# summary say the same, so those lines are held back (warnings still pass).
_QUIET_LOGGERS = ("dispatcher.leads",)


class ImportAborted(Exception):
    """A fatal error: the import stopped (batches already committed stay; rerun to finish)."""


@dataclass(frozen=True)
class ImportReport:
    path: Path
    rejects_path: Path
    rows: int
    created: int
    duplicates: int  # rows whose lead already existed: imported before, or repeated keys
    rejected: int
    elapsed_s: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0


def default_rejects_path(path: Path) -> Path:
    """leads.csv → leads.rejects.csv, beside the input."""
    return path.with_name(f"{path.stem if path.suffix else path.name}.rejects.csv")


# --- keys -------------------------------------------------------------------------------


def content_digest(cells: Mapping[str, Any]) -> bytes:
    """The normalised content of a row: lead columns only, sorted, no blanks, no key."""
    canonical = {k: v for k, v in cells.items() if k != "idempotency_key"}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).digest()


def derived_key(digest: bytes, ordinal: int) -> str:
    """The key of the `ordinal`-th row of the file with this content."""
    return KEY_PREFIX + hashlib.sha256(digest + b"#%d" % ordinal).hexdigest()[:32]


class _Ordinals:
    """How many rows with each content were seen so far (see the module docstring)."""

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self._repeats: dict[int, int] = {}

    def next(self, digest: bytes) -> int:
        short = int.from_bytes(digest[:8], "big")
        if short not in self._seen:
            self._seen.add(short)
            return 1
        ordinal = self._repeats.get(short, 1) + 1
        self._repeats[short] = ordinal
        return ordinal


# --- reading ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    line: int
    raw: dict[str | None, Any]  # as csv.DictReader gave it, for the rejects file


@dataclass(frozen=True)
class _Rejected:
    """A row refused before the lead service sees it: (field, message) pairs. Becomes an
    InvalidInput in the process that calls create_many (exceptions pickle poorly)."""

    errors: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Batch:
    rows: list[_Row]
    items: list[Mapping[str, Any] | _Rejected]  # one per row, for create_many
    end_pos: int  # bytes of the file read once this batch was complete


def _columns(header: Sequence[str] | None) -> dict[str, str]:
    """Original header name → lead column; raises ImportAborted for a header we refuse."""
    if not header:
        raise ImportAborted("the file is empty: expected a header row with a 'phone' column")
    columns: dict[str, str] = {}
    unknown: list[str] = []
    for name in header:
        column = (name or "").strip().lower()
        if column in SIDE_COLUMNS:
            continue
        if column == "reseller_id":
            raise ImportAborted("the file has a reseller_id column: the reseller is --reseller")
        if column not in LEAD_COLUMNS:
            unknown.append(name)
        elif column in columns.values():
            raise ImportAborted(f"column {column!r} appears twice in the header")
        else:
            columns[name] = column
    if unknown:
        raise ImportAborted(
            f"unknown column(s) {', '.join(map(repr, unknown))}; "
            f"the columns are the API's lead fields: {', '.join(LEAD_COLUMNS)}"
        )
    if "phone" not in columns.values():
        raise ImportAborted("the header has no 'phone' column")
    return columns


def _prepare(
    raw: Mapping[str | None, Any],
    columns: Mapping[str, str],
    reseller: str,
    template: str,
    ordinals: _Ordinals,
) -> Mapping[str, Any] | _Rejected:
    """The create_many item of one CSV row (blank cells left out: they count as missing),
    or why it is rejected before the lead service sees it."""
    cells: dict[str, Any] = {}
    for name, column in columns.items():
        value = raw.get(name)
        if value is not None and value.strip():
            cells[column] = value.strip()
    payload_error: tuple[str, str] | None = None
    if "payload" in cells:
        try:
            cells["payload"] = json.loads(cells["payload"], parse_constant=_no_constant)
        except ValueError as exc:
            payload_error = ("payload", f"is not valid JSON ({exc})")
    digest = content_digest(cells)
    ordinal = ordinals.next(digest)  # counted for every row, so keys never depend on errors
    surplus = raw.get(None)
    if surplus:
        n = len(surplus)
        return _Rejected((("row", f"has {n} more cell(s) than the header"),))
    if payload_error is not None:
        return _Rejected((payload_error,))
    if _has_nul(list(raw.values())) or _has_nul(cells.get("payload")):
        # PostgreSQL stores no NUL character: one such row would abort its whole batch.
        return _Rejected((("row", "contains a NUL character"),))
    cells.setdefault("idempotency_key", derived_key(digest, ordinal))
    cells.setdefault("template", template)
    return {**cells, "reseller_id": reseller}


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (PostgreSQL refuses it)")


def _batches(
    binary: io.BufferedReader,
    reader: csv.DictReader[str],
    columns: Mapping[str, str],
    reseller: str,
    template: str,
    size: int,
) -> Iterator[_Batch]:
    ordinals = _Ordinals()
    rows: list[_Row] = []
    items: list[Mapping[str, Any] | _Rejected] = []
    for raw in reader:
        rows.append(_Row(reader.line_num, raw))
        items.append(_prepare(raw, columns, reseller, template, ordinals))
        if len(rows) == size:
            yield _Batch(rows, items, binary.tell())
            rows, items = [], []
    if rows:
        yield _Batch(rows, items, binary.tell())


# --- running batches --------------------------------------------------------------------


@dataclass(frozen=True)
class _BatchResult:
    created: int
    duplicates: int
    errors: dict[int, str]  # index in the batch → reason


def _reason(errors: Sequence[Any]) -> str:
    """'field: message; ...' naming each field (a conflict's message already names it)."""
    return "; ".join(
        e.message if e.message.startswith(e.field) else f"{e.field}: {e.message}" for e in errors
    )


def _create_batch(conn: Connection, items: Sequence[Any]) -> _BatchResult:
    """One batch, one transaction. A deadlock (two batches inserting the same keys in
    opposite orders, only possible with repeated explicit keys) is retried: the batch is
    idempotent."""
    from psycopg import errors as pg_errors

    from dispatcher import leads

    request = [
        leads.InvalidInput([leads.FieldError(*e) for e in item.errors])
        if isinstance(item, _Rejected)
        else item
        for item in items
    ]
    for attempt in range(_DEADLOCK_RETRIES):
        try:
            with conn.transaction():
                result = leads.create_many(conn, request)
            break
        except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure):
            if attempt == _DEADLOCK_RETRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    return _BatchResult(
        result.created, result.duplicates, {e.index: _reason(e.errors) for e in result.errors}
    )


_worker_conn: Connection | None = None


def _worker_init(database_url: str, log_level: str, log_json: bool) -> None:
    """Runs once in each worker process: logs like the parent, and one connection."""
    global _worker_conn
    from db.pool import connect
    from dispatcher import logs

    logs.configure(log_level, log_json)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    _worker_conn = connect(database_url, autocommit=True)


def _worker_batch(items: Sequence[Any]) -> _BatchResult:
    from psycopg import Error as DatabaseError

    assert _worker_conn is not None, "worker not initialised"
    try:
        return _create_batch(_worker_conn, items)
    except DatabaseError as exc:  # not every psycopg error survives pickling to the parent
        raise ImportAborted(f"database error: {exc}") from None


class _Inline:
    """Batches run in this process, one after another, on one connection."""

    def __init__(self, database_url: str) -> None:
        from db.pool import connect

        self._conn = connect(database_url, autocommit=True)

    def submit(self, items: Sequence[Any]) -> Future[_BatchResult]:
        future: Future[_BatchResult] = Future()
        future.set_result(_create_batch(self._conn, items))
        return future

    def close(self) -> None:
        self._conn.close()


class _Pool:
    """Batches run in worker processes. Where fork exists they are forked, all at once and
    before the progress bar starts its thread (a fork copies only the calling thread);
    elsewhere they are spawned."""

    def __init__(self, database_url: str, workers: int, log_level: str, log_json: bool) -> None:
        fork = "fork" in multiprocessing.get_all_start_methods()
        self._executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("fork" if fork else "spawn"),
            initializer=_worker_init,
            initargs=(database_url, log_level, log_json),
        )
        # Starts the workers now; a worker that cannot connect breaks the pool here.
        self._executor.submit(int).result()

    def submit(self, items: Sequence[Any]) -> Future[_BatchResult]:
        return self._executor.submit(_worker_batch, items)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


# --- the import -------------------------------------------------------------------------


class _RowRate(ProgressColumn):
    def render(self, task: Task) -> Text:
        rows, elapsed = task.fields.get("rows", 0), task.elapsed
        rate = f"{rows / elapsed:,.0f}" if elapsed else "-"
        return Text(f"{rate} rows/s", style="progress.data.speed")


def _check_database(database_url: str, template: str) -> None:
    from db.pool import connect

    with connect(database_url, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM templates WHERE name = %s", (template,)).fetchone()
    if found is None:
        raise ImportAborted(f"no template named {template!r} (--template)")


@contextlib.contextmanager
def _quiet_batch_logs() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def import_csv(
    database_url: str,
    path: Path,
    *,
    reseller: str,
    template: str,
    batch: int = DEFAULT_BATCH,
    rejects_path: Path | None = None,
    workers: int = 1,
    console: Console | None = None,
    progress: bool = False,
    log_level: str = "INFO",
    log_json: bool = True,
) -> ImportReport:
    """Import `path` for `reseller`; `template` is the default of rows that name none.

    Raises ImportAborted for a fatal error (unreadable file, refused header, unknown
    template, lost database); the batches committed before it stay, and a rerun of the
    same command finishes the job without duplicating them."""
    started = time.monotonic()
    if not 1 <= batch <= MAX_BATCH:
        raise ImportAborted(f"--batch must be between 1 and {MAX_BATCH}")
    if not reseller.strip():
        raise ImportAborted("--reseller must not be blank")
    rejects_path = rejects_path or default_rejects_path(path)
    with contextlib.suppress(OSError):
        if rejects_path.resolve() == path.resolve():
            raise ImportAborted("the rejects file cannot be the file being imported")
    try:
        binary = open(path, "rb")  # noqa: SIM115 - closed below, after the generator
    except OSError as exc:
        raise ImportAborted(f"cannot read {path}: {exc.strerror or exc}") from exc
    total_bytes = os.fstat(binary.fileno()).st_size
    text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
    created = duplicates = rejected = rows = 0
    runner: _Inline | _Pool | None = None
    try:
        reader = csv.DictReader(text)
        columns = _columns(reader.fieldnames)
        _check_database(database_url, template)
        header = [
            name for name in reader.fieldnames or [] if name.strip().lower() not in SIDE_COLUMNS
        ]
        batches = _batches(binary, reader, columns, reseller, template, batch)
        first = next(batches, None)
        second = next(batches, None) if first is not None else None
        runner = (
            _Pool(database_url, workers, log_level, log_json)
            if workers > 1 and second is not None
            else _Inline(database_url)
        )
        ordered = (b for b in (first, second) if b is not None)
        pending: deque[tuple[_Batch, Future[_BatchResult]]] = deque()
        in_flight = max(1, workers * _IN_FLIGHT_PER_WORKER)
        bar = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rows]:,} rows"),
            _RowRate(),
            TimeRemainingColumn(),
            console=console,
            disable=not progress,
            transient=False,
        )
        with (
            open(rejects_path, "w", newline="", encoding="utf-8") as side,
            bar,
            _quiet_batch_logs(),
        ):
            writer = csv.DictWriter(side, [*header, *SIDE_COLUMNS], extrasaction="ignore")
            writer.writeheader()
            task = bar.add_task(f"importing {path.name}", total=total_bytes or None, rows=0)

            def settle(done: _Batch, result: _BatchResult) -> None:
                nonlocal created, duplicates, rejected, rows
                created += result.created
                duplicates += result.duplicates
                rejected += len(result.errors)
                rows += len(done.rows)
                for index, reason in sorted(result.errors.items()):
                    row = done.rows[index]
                    writer.writerow({**row.raw, "line": row.line, "reason": reason})
                side.flush()
                bar.update(task, completed=done.end_pos, rows=rows)

            for next_batch in itertools.chain(ordered, batches):
                pending.append((next_batch, runner.submit(next_batch.items)))
                while len(pending) >= in_flight or (pending and pending[0][1].done()):
                    done, future = pending.popleft()
                    settle(done, future.result())
            while pending:
                done, future = pending.popleft()
                settle(done, future.result())
    except Exception as exc:
        aborted = _aborted(exc, path, rows)
        if aborted is exc:
            raise
        raise aborted from exc
    finally:
        if runner is not None:
            runner.close()
        text.close()
    report = ImportReport(
        path, rejects_path, rows, created, duplicates, rejected, time.monotonic() - started
    )
    _log().info(
        "leads_imported",
        path=str(path),
        reseller_id=reseller,
        rows=rows,
        created=created,
        duplicates=duplicates,
        rejected=rejected,
        elapsed_s=round(report.elapsed_s, 3),
    )
    return report


def _aborted(exc: Exception, path: Path, rows: int) -> Exception:
    """The fatal error to report for `exc`, saying how to finish the job; `exc` itself
    when it is a bug rather than a condition of the file, the database or the machine."""
    from psycopg import Error as DatabaseError

    if isinstance(exc, ImportAborted):
        message = str(exc)
    elif isinstance(exc, OSError | UnicodeDecodeError | csv.Error):
        message = f"{path}: {exc}"
    elif isinstance(exc, DatabaseError):
        message = f"database error: {exc}"
    elif isinstance(exc, BrokenProcessPool):
        message = "a worker process died"
    else:
        return exc
    if rows:
        message += (
            f" (after {rows:,} rows were done; rerun the same command to finish:"
            " rows already imported are skipped)"
        )
    return ImportAborted(message)


def _log() -> Any:
    import structlog

    return structlog.get_logger(__name__)


def print_report(console: Console, report: ImportReport) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("rows read", f"{report.rows:,}")
    table.add_row("created", f"[green]{report.created:,}[/]")
    table.add_row("already imported (duplicates)", f"{report.duplicates:,}")
    table.add_row("rejected", f"[red]{report.rejected:,}[/]" if report.rejected else "0")
    table.add_row("time", f"{report.elapsed_s:.1f} s ({report.rows_per_s:,.0f} rows/s)")
    console.print(table)
    if report.rejected:
        console.print(f"rejected rows and their reasons: {report.rejects_path}")


# --- the command ------------------------------------------------------------------------


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def import_command(
    file: Annotated[Path, typer.Argument(help="CSV with a header row of lead fields")],
    reseller: Annotated[str, typer.Option("--reseller", help="reseller the leads belong to")],
    template: Annotated[str, typer.Option("--template", help="for rows with no template")],
    batch: Annotated[
        int, typer.Option("--batch", min=1, max=MAX_BATCH, help="rows per transaction")
    ] = DEFAULT_BATCH,
    rejects: Annotated[
        Path | None, typer.Option("--rejects", help="rejected rows [default: FILE.rejects.csv]")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="processes validating batches [default: CPUs, ≤4]"),
    ] = None,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="env DATABASE_URL")
    ] = None,
) -> None:
    """Import leads from a CSV file of the API's lead fields.

    Safe to rerun (after a crash, or twice): rows already imported are skipped. Rejected
    rows go to the rejects file with their line and reason. Exit 0 when it completed
    (rejected rows included), 1 on a fatal error."""
    from dispatcher import logs
    from dispatcher.settings import Settings

    settings = Settings.load(database_url=database_url)
    logs.configure(settings.log_level, settings.log_json)
    out, err = Console(), Console(stderr=True)
    if not settings.database_url:
        err.print("[red]error:[/] DATABASE_URL is not set (or pass --database-url)", soft_wrap=True)
        raise typer.Exit(1)
    try:
        report = import_csv(
            settings.database_url,
            file,
            reseller=reseller,
            template=template,
            batch=batch,
            rejects_path=rejects,
            workers=workers or _default_workers(),
            console=err,
            progress=True,
            log_level=settings.log_level,
            log_json=settings.log_json,
        )
    except ImportAborted as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    print_report(out, report)
