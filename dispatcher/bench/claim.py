"""`bench claim`: how fast the scheduler's claim moves due leads BACKLOG → QUEUED, and what
each claim costs, with 1, 2 and 4 claiming processes.

N due leads are loaded through the lifecycle into a fresh database; then each claimer
process runs the real claim (`scheduler.claim_fairly` in one transaction, as
`scheduler.tick` does, with capacity never the limit and nothing dispatched) until
nothing is due. Measured: leads/s over the run; per claimed lead the statements sent
and the table rows read and written; per claim transaction its duration. Afterwards
every lead must be QUEUED and have been claimed exactly once.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import multiprocessing.synchronize
import queue
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import psycopg
from psycopg.rows import dict_row

from dispatcher import controls, lifecycle, scheduler
from dispatcher.bench import stats
from dispatcher.bench.env import BENCH_TEMPLATE, BenchEnv, wait_until
from dispatcher.lifecycle import NewLead
from dispatcher.settings import Settings

PROCESSES = (1, 2, 4)
LEASE_S = 600.0  # no lease expires during a run


class ClaimError(RuntimeError):
    """A run whose claims do not add up (a lead claimed twice, or never)."""


# --- counting statements -------------------------------------------------------------------
# Counted in the client, not with pg_stat_statements: that extension must be preloaded
# (shared_preload_libraries, a server restart), which a stock server does not do, and a
# benchmark must run against the server it is given.


class CountingConnection(psycopg.Connection[Any]):
    """A connection that knows how many statements its cursors have sent."""

    statements: int = 0


class CountingCursor(psycopg.Cursor[Any]):
    """Counts each statement sent through `execute` and each parameter set of
    `executemany` on its connection (BEGIN/COMMIT of `conn.transaction()` bypass cursors
    and are not counted)."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        _count(self.connection, 1)
        return super().execute(query, params, **kwargs)

    def executemany(self, query: Any, params_seq: Iterable[Any], **kwargs: Any) -> None:
        params = list(params_seq)
        _count(self.connection, len(params))
        super().executemany(query, params, **kwargs)


def _count(conn: Any, n: int) -> None:
    if isinstance(conn, CountingConnection):
        conn.statements += n


def counting_connect(url: str, **kwargs: Any) -> CountingConnection:
    return CountingConnection.connect(url, cursor_factory=CountingCursor, **kwargs)


# --- rows touched ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TableCounters:
    """Cumulative row counters of the user tables (pg_stat_user_tables), summed."""

    read: int  # rows returned by sequential scans plus rows fetched through indexes
    written: int  # rows inserted, updated and deleted
    hot_updates: int
    FIELDS: ClassVar[str] = (
        "coalesce(sum(seq_tup_read), 0) + coalesce(sum(idx_tup_fetch), 0),"
        " coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0),"
        " coalesce(sum(n_tup_hot_upd), 0)"
    )

    def minus(self, before: TableCounters) -> TableCounters:
        return TableCounters(
            self.read - before.read,
            self.written - before.written,
            self.hot_updates - before.hot_updates,
        )


def table_counters(url: str) -> TableCounters:
    """The counters as of now. A new connection each time: a backend caches its stats
    snapshot for the length of a transaction."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(f"SELECT {TableCounters.FIELDS} FROM pg_stat_user_tables").fetchone()
    assert row is not None
    return TableCounters(int(row[0]), int(row[1]), int(row[2]))


def settled_counters(url: str, timeout_s: float = 10.0) -> TableCounters:
    """The counters once every other backend on the database has gone (a backend flushes
    its counters when it exits) and two reads agree."""

    def alone() -> bool:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend'"
            ).fetchone()
        return row is not None and row[0] == 0

    wait_until(alone, timeout_s, interval_s=0.05)
    last = table_counters(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = table_counters(url)
        if now == last:
            return now
        last = now
    return last


# --- one claimer -------------------------------------------------------------------------------


@dataclass
class ClaimerResult:
    claimed: list[int] = field(default_factory=list)
    transactions_ms: list[float] = field(default_factory=list)  # claims that got leads
    empty_transactions: int = 0
    statements: int = 0  # in the transactions that got leads
    started: float = 0.0  # time.monotonic(): one clock for every process on the machine
    finished: float = 0.0


def claim_until_empty(conn: CountingConnection, batch: int, lease_s: float) -> ClaimerResult:
    """Claim `batch` at a time, as `scheduler.tick` does, until a claim comes back empty
    (the advisory lock serialises claims, so empty means nothing is due)."""
    out = ClaimerResult(started=time.monotonic())
    while True:
        before = conn.statements
        t0 = time.perf_counter()
        with conn.transaction():
            paused = controls.paused(conn)
            got = scheduler.claim_fairly(conn, batch, lease_s, paused)
        ms = (time.perf_counter() - t0) * 1000
        if not got:
            out.empty_transactions += 1
            break
        out.claimed += [c.lead_id for c in got]
        out.transactions_ms.append(ms)
        out.statements += conn.statements - before
    out.finished = time.monotonic()
    return out


def _claimer(
    url: str,
    batch: int,
    lease_s: float,
    ready: multiprocessing.synchronize.Barrier,
    results: multiprocessing.Queue[ClaimerResult | str],
) -> None:
    """A claimer process: connect, wait for the others, claim until nothing is due."""
    try:
        with counting_connect(url, row_factory=dict_row) as conn:
            conn.execute("SELECT 1")  # connected and authenticated before the start
            ready.wait()
            results.put(claim_until_empty(conn, batch, lease_s))
    except Exception as exc:  # the parent reports it; a traceback in a child is lost
        results.put(f"{type(exc).__name__}: {exc}")


def run_claimers(url: str, processes: int, batch: int, lease_s: float) -> list[ClaimerResult]:
    """`processes` claimer processes (spawned: no inherited connections), started together."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Barrier(processes + 1)
    results: multiprocessing.Queue[ClaimerResult | str] = ctx.Queue()
    procs = [
        ctx.Process(target=_claimer, args=(url, batch, lease_s, ready, results), daemon=True)
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    try:
        ready.wait(timeout=120)
        out: list[ClaimerResult] = []
        for _ in procs:
            got = results.get(timeout=600)
            if isinstance(got, str):
                raise ClaimError(f"a claimer failed: {got}")
            out.append(got)
    except (queue.Empty, multiprocessing.BrokenBarrierError) as exc:
        raise ClaimError("a claimer did not start or finish in time") from exc
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return out


# --- the scenario ------------------------------------------------------------------------------


def load_due(url: str, n: int, resellers: int, chunk: int = 10_000) -> list[int]:
    """`n` leads due a minute ago, spread round-robin over `resellers`; their ids."""
    ids: list[int] = []
    with psycopg.connect(url, row_factory=dict_row) as conn:
        row = conn.execute("SELECT now() - interval '1 minute' AS t").fetchone()
        assert row is not None
        due = row["t"]
        for start in range(0, n, chunk):
            batch = [
                NewLead(
                    reseller_id=f"r{i % resellers}",
                    phone=f"+1202555{i % 10_000:04d}",
                    template=BENCH_TEMPLATE,
                    next_attempt_at=due - dt.timedelta(microseconds=i),
                    priority=1 + i % 10,
                )
                for i in range(start, min(start + chunk, n))
            ]
            with conn.transaction():
                ids += [i for i in lifecycle.create_leads(conn, batch) if i is not None]
    with psycopg.connect(url, autocommit=True) as conn:
        # Steady state, not the first touch of fresh pages: hint bits set, statistics known.
        conn.execute("VACUUM (ANALYZE) leads")
    return ids


def check(url: str, loaded: Sequence[int], results: Sequence[ClaimerResult]) -> None:
    """Every loaded lead claimed exactly once, and the database agrees."""
    claimed = [i for r in results for i in r.claimed]
    if len(set(claimed)) != len(claimed):
        raise ClaimError(f"{len(claimed) - len(set(claimed))} leads were claimed twice")
    if set(claimed) != set(loaded):
        raise ClaimError(f"{len(loaded)} leads loaded, {len(set(claimed))} claimed")
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'QUEUED'),"
            " count(*) FILTER (WHERE status = 'BACKLOG'),"
            " (SELECT count(*) FROM lead_events WHERE reason = 'claimed')"
            " FROM leads"
        ).fetchone()
    assert row is not None
    if tuple(row) != (len(loaded), 0, len(loaded)):
        raise ClaimError(f"database says queued, backlog, claim events = {tuple(row)}")


def summarize(
    results: Sequence[ClaimerResult], rows: TableCounters | None = None
) -> dict[str, float]:
    """Throughput over the run (first start to last finish) and the cost per claim."""
    claimed = sum(len(r.claimed) for r in results)
    txn_ms = [ms for r in results for ms in r.transactions_ms]
    out: dict[str, float] = {
        "claimed": float(claimed),
        "leads_per_s": stats.rate(
            claimed,
            max((r.finished for r in results), default=0.0)
            - min((r.started for r in results), default=0.0),
        ),
        "transactions": float(len(txn_ms)),
    }
    if claimed:
        out["statements_per_lead"] = sum(r.statements for r in results) / claimed
        out["ms_per_lead"] = sum(txn_ms) / claimed
    if txn_ms:
        out["statements_per_txn"] = sum(r.statements for r in results) / len(txn_ms)
        out["txn_p50_ms"] = stats.percentile(txn_ms, 50)
        out["txn_p99_ms"] = stats.percentile(txn_ms, 99)
    if rows is not None and claimed:
        out["rows_read_per_lead"] = rows.read / claimed
        out["rows_written_per_lead"] = rows.written / claimed
        out["hot_updates_per_lead"] = rows.hot_updates / claimed
    return out


def run_one(
    env: BenchEnv, processes: int, leads: int, resellers: int, batch: int
) -> dict[str, float]:
    """One process count on its own fresh database."""
    with env.database(f"claim{processes}") as url:
        loaded = load_due(url, leads, resellers)
        before = settled_counters(url)
        results = run_claimers(url, processes, batch, LEASE_S)
        rows = settled_counters(url).minus(before)
        check(url, loaded, results)
    return summarize(results, rows)


def run(
    env: BenchEnv,
    processes: Sequence[int] = PROCESSES,
    leads: int = 100_000,
    resellers: int = 10,
    batch: int | None = None,
) -> dict[str, float]:
    size = batch or Settings().claim_batch
    out: dict[str, float] = {}
    for p in processes:
        for key, value in run_one(env, p, leads, resellers, size).items():
            out[f"p{p}.{key}"] = value
    return out
