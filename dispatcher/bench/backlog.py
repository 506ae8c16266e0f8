"""`bench backlog`: pickup latency and claim cost as the leads table grows.

For each size N, a fresh database gets a background of N future-dated BACKLOG leads, a
number of finished leads (COMPLETED, each with its ended call_attempts row) and overdue
leads of a paused reseller; then the engine world runs a steady load over it. The target
is that latency and claim cost at 1M and 10M stay within 1.2x of those at 10k.

The background is bench data, not lifecycle traffic: it is written straight into the
tables (no lead_events, no NOTIFY, foreign-key triggers off) because only its size and
shape in the heap and in the indexes matter here, and going through the lifecycle would
take hours at 10M rows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from dispatcher import controls, scheduler
from dispatcher.bench import stats
from dispatcher.bench.env import BENCH_TEMPLATE, BenchEnv
from dispatcher.bench.world import Shape, world
from dispatcher.lifecycle import NewLead, create_leads

# The overdue leads belong to a reseller that is paused through `controls`: claims skip
# paused resellers, so these leads stay overdue for the whole run and sit in the claim
# indexes (leads_claim_idx, leads_oldest_idx, leads_due_idx) like a real stuck backlog,
# instead of being dispatched in the first seconds and turning into finished rows.
PAUSED_RESELLER = "bench-paused"
# The finished leads' attempts name this number; disabled, so no capacity comes from it.
BACKGROUND_NUMBER = "+19995550000"
FILL_METHODS = ("sql", "copy")
PROBE_LEADS = 500  # the scheduler's default claim batch
IDLE_S = 5.0  # the idle period before the load, for the schedulers' idle CPU


@dataclass(frozen=True)
class Background:
    future: int
    finished: int = 1_000_000
    overdue: int = 100_000
    resellers: int = 1  # the live resellers (r0, r1, ...), as World.load names them
    priorities: str = "mixed"  # future leads' priority: "mixed" 1..10, or "same" (5)
    method: str = "sql"


def _constraint_free_indexes(conn: psycopg.Connection[Any], table: str) -> list[tuple[str, str]]:
    """(name, CREATE INDEX statement) of `table`'s indexes that back no constraint."""
    rows = conn.execute(
        """
        SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
        FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid
        WHERE i.indrelid = %s::regclass AND c.oid IS NULL
        """,
        (table,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


@contextlib.contextmanager
def _indexes_rebuilt(conn: psycopg.Connection[Any], tables: Sequence[str]) -> Iterator[None]:
    """Drop the secondary indexes for the fill and build them after it: sorting 10M keys
    once is several times faster than 10M random btree insertions. The rebuilt indexes
    are packed tighter than ones grown row by row (noted in the report, not hidden)."""
    saved = [ix for t in tables for ix in _constraint_free_indexes(conn, t)]
    for name, _ in saved:
        conn.execute(f"DROP INDEX {name}")
    try:
        yield
    finally:
        conn.execute("SET maintenance_work_mem = '512MB'")
        for _, ddl in saved:
            conn.execute(ddl)


def _future_sql(bg: Background) -> str:
    prio = "1 + (g %% 10)" if bg.priorities == "mixed" else "5"
    # Due 1 to 10 days ahead, spread evenly: never due during the run.
    return f"""
        INSERT INTO leads (reseller_id, phone, template, status, priority, next_attempt_at)
        SELECT 'r' || (g %% %(resellers)s), '+1303' || lpad((g %% 10000000)::text, 7, '0'),
               %(template)s, 'BACKLOG', {prio},
               now() + interval '1 day' + (g::float8 / %(n)s) * interval '9 days'
        FROM generate_series(1, %(n)s) g
    """


def _fill_future_copy(conn: psycopg.Connection[Any], bg: Background, now: dt.datetime) -> None:
    """The same rows as `_future_sql`, generated in Python and sent with COPY."""
    n = bg.future
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY leads (reseller_id, phone, template, status, priority, next_attempt_at)"
            " FROM STDIN"
        ) as copy,
    ):
        for g in range(1, n + 1):
            copy.write_row(
                (
                    f"r{g % bg.resellers}",
                    f"+1303{g % 10_000_000:07d}",
                    BENCH_TEMPLATE,
                    "BACKLOG",
                    1 + g % 10 if bg.priorities == "mixed" else 5,
                    now + dt.timedelta(days=1) + g / n * dt.timedelta(days=9),
                )
            )


def fill(url: str, bg: Background) -> dict[str, float]:
    """Write the background; seconds per part and the sizes it left."""
    if bg.method not in FILL_METHODS:
        raise ValueError(f"fill method must be one of {FILL_METHODS}")
    out: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        # Foreign-key triggers off for this session (superuser): the rows are made valid.
        conn.execute("SET session_replication_role = replica")
        number = conn.execute(
            "INSERT INTO outbound_numbers (e164, provider, max_channels, enabled)"
            " VALUES (%s, 'instant', 1, false) RETURNING id",
            (BACKGROUND_NUMBER,),
        ).fetchone()
        assert number is not None
        conn.execute(
            "INSERT INTO controls (scope, scope_id, paused) VALUES ('reseller', %s, true)",
            (PAUSED_RESELLER,),
        )
        started = time.monotonic()
        with _indexes_rebuilt(conn, ("leads", "call_attempts")):
            t = time.monotonic()
            if bg.future and bg.method == "sql":
                conn.execute(
                    _future_sql(bg),
                    {"resellers": bg.resellers, "template": BENCH_TEMPLATE, "n": bg.future},
                )
            elif bg.future:
                now_row = conn.execute("SELECT now()").fetchone()
                assert now_row is not None
                _fill_future_copy(conn, bg, now_row[0])
            out["fill_future_s"] = time.monotonic() - t
            t = time.monotonic()
            conn.execute(
                """
                INSERT INTO leads (reseller_id, phone, template, status, priority,
                                   next_attempt_at, attempt_count, outcome, created_at)
                SELECT 'r' || (g %% %(resellers)s),
                       '+1404' || lpad((g %% 10000000)::text, 7, '0'), %(template)s,
                       'COMPLETED', 5, now() - interval '30 days' + g * interval '1 ms', 1,
                       'completed', now() - interval '31 days'
                FROM generate_series(1, %(n)s) g
                """,
                {"resellers": bg.resellers, "template": BENCH_TEMPLATE, "n": bg.finished},
            )
            conn.execute(
                """
                INSERT INTO call_attempts (id, lead_id, attempt_no, reseller_id, phone,
                    number_id, number, provider, call_state, outcome, due_at, started_at,
                    placed_at, ended_at, duration_s)
                SELECT gen_random_uuid(), id, 1, reseller_id, phone, %(number)s, %(e164)s,
                       'instant', 'ended', 'completed', next_attempt_at, next_attempt_at,
                       next_attempt_at, next_attempt_at + interval '30 s', 30
                FROM leads WHERE status = 'COMPLETED'
                """,
                {"number": number[0], "e164": BACKGROUND_NUMBER},
            )
            out["fill_finished_s"] = time.monotonic() - t
            t = time.monotonic()
            conn.execute(
                """
                INSERT INTO leads (reseller_id, phone, template, status, priority,
                                   next_attempt_at)
                SELECT %(reseller)s, '+1505' || lpad(g::text, 7, '0'), %(template)s,
                       'BACKLOG', 5, now() - interval '1 hour' - g * interval '10 ms'
                FROM generate_series(1, %(n)s) g
                """,
                {"reseller": PAUSED_RESELLER, "template": BENCH_TEMPLATE, "n": bg.overdue},
            )
            out["fill_overdue_s"] = time.monotonic() - t
            t = time.monotonic()
        out["fill_index_build_s"] = time.monotonic() - t
        t = time.monotonic()
        conn.execute("VACUUM ANALYZE leads")
        conn.execute("VACUUM ANALYZE call_attempts")
        out["fill_vacuum_s"] = time.monotonic() - t
        out["fill_total_s"] = time.monotonic() - started
        out.update(sizes(conn))
    return out


def sizes(conn: psycopg.Connection[Any]) -> dict[str, float]:
    """Row count and heap and index bytes of leads and call_attempts (in MiB)."""
    out: dict[str, float] = {}
    for table in ("leads", "call_attempts"):
        row = conn.execute(
            "SELECT (SELECT count(*) FROM " + table + "),"
            " pg_relation_size(%s::regclass), pg_indexes_size(%s::regclass)",
            (table, table),
        ).fetchone()
        assert row is not None
        out[f"{table}_rows"] = float(row[0])
        out[f"{table}_heap_mib"] = row[1] / 2**20
        out[f"{table}_indexes_mib"] = row[2] / 2**20
    return out


def claim_cost(url: str, resellers: int, rounds: int = 20) -> dict[str, float]:
    """The scheduler's claim transaction (`scheduler.claim_fairly`, a full batch) over
    PROBE_LEADS due leads of the live resellers, timed `rounds` times and rolled back each
    time, before any process runs: the cost of one claim at this table size, apart from
    the noise of the running system. The probe leads are deleted afterwards."""
    ms: list[float] = []
    with psycopg.connect(url, row_factory=dict_row) as conn:
        with conn.transaction():
            due = conn.execute("SELECT now() - interval '1 s' AS t").fetchone()
            assert due is not None
            ids = create_leads(
                conn,
                [
                    NewLead(f"r{i % resellers}", f"+1606{i:07d}", BENCH_TEMPLATE, due["t"])
                    for i in range(PROBE_LEADS)
                ],
            )
        claimed = 0
        for _ in range(rounds):
            with conn.transaction(force_rollback=True):
                paused = controls.paused(conn)
                t = time.perf_counter()
                got = scheduler.claim_fairly(conn, PROBE_LEADS, 30.0, paused)
                ms.append((time.perf_counter() - t) * 1000)
                claimed = len(got)
        with conn.transaction():
            conn.execute("DELETE FROM leads WHERE id = ANY(%s)", ([i for i in ids if i],))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE leads")
        conn.execute("VACUUM lead_events")
    out = {f"claim_{k}_ms": v for k, v in stats.latency_summary(ms).items() if k != "count"}
    out["claim_claimed"] = float(claimed)
    return out


class _FilledEnv(BenchEnv):
    """A BenchEnv whose fresh databases get the background (and the claim probe) before
    world() inserts its numbers and starts any process: world() itself is reused as is."""

    def __init__(self, env: BenchEnv, prepare: Callable[[str], None]) -> None:
        super().__init__(env.server_url, env.redis_url, env.work_dir)
        self._prepare = prepare

    @contextlib.contextmanager
    def database(self, name: str) -> Iterator[str]:
        with super().database(name) as url:
            self._prepare(url)
            yield url


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) of the live processes of a process group, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: the process group
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run_size(
    env: BenchEnv, shape: Shape, bg: Background, rate: float, seconds: float
) -> dict[str, float]:
    """One size: fill, probe the claim, then the steady load on the running system."""
    out: dict[str, float] = {}

    def prepare(url: str) -> None:
        out.update(fill(url, bg))
        out.update(claim_cost(url, bg.resellers))

    with world(_FilledEnv(env, prepare), shape, f"backlog{bg.future}") as w:
        pids = {name: p.pid for name, p in w.procs.procs.items() if name.startswith("sched")}
        # Idle: nothing of the live resellers is due, only the paused reseller's overdue
        # leads. A scheduler that sleeps costs ~0 here; one that polls shows up.
        cpu0 = {name: group_cpu_s(pid) for name, pid in pids.items()}
        t0 = time.monotonic()
        time.sleep(IDLE_S)
        idle = sum(group_cpu_s(pid) - cpu0[name] for name, pid in pids.items())
        out["scheduler_idle_cpu_share"] = idle / (time.monotonic() - t0)
        cpu0 = {name: group_cpu_s(pid) for name, pid in pids.items()}
        t0 = time.monotonic()
        out.update(w.steady(rate, seconds))
        wall = time.monotonic() - t0
        cpu = sum(group_cpu_s(pid) - cpu0[name] for name, pid in pids.items())
        out["scheduler_cpu_share"] = cpu / wall if wall > 0 else 0.0
        with psycopg.connect(w.database_url) as conn:
            out.update({f"after_{k}": v for k, v in sizes(conn).items()})
    return out


def with_ratios(per_size: dict[int, dict[str, float]], base: int) -> dict[str, float]:
    """Flatten to `size{N}.metric`, plus `size{N}.{metric}_ratio` = value / the base size's
    value for the latency and claim-cost metrics (the 1.2x target)."""
    out: dict[str, float] = {}
    compared = ("pickup_p50_ms", "pickup_p99_ms", "claim_p50_ms", "claim_p99_ms")
    for size, metrics in per_size.items():
        for key, value in metrics.items():
            out[f"size{size}.{key}"] = value
        if base in per_size:
            for key in compared:
                if key in metrics and key in per_size[base]:
                    r = stats.ratio(metrics[key], per_size[base][key])
                    if r is not None:
                        out[f"size{size}.{key}_ratio"] = r
    return out


def run(
    env: BenchEnv,
    shape: Shape,
    sizes_: Sequence[int],
    rate: float,
    seconds: float,
    finished: int,
    overdue: int,
    priorities: str = "mixed",
    method: str = "sql",
) -> dict[str, float]:
    per_size: dict[int, dict[str, float]] = {}
    for n in sizes_:
        bg = Background(n, finished, overdue, shape.resellers, priorities, method)
        per_size[n] = run_size(env, shape, bg, rate, seconds)
    return with_ratios(per_size, min(sizes_))
