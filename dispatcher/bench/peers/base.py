"""What every contender shares: the results tables, the recorder its no-op writes start
times with, its processes, and the interface `compare` drives.

Start times are taken in the worker at the moment the no-op work runs, on the database's
clock (the local clock corrected by an offset measured against `clock_timestamp()` when
the process starts), and written by a background thread in batches, so that recording
costs every contender the same and sits off the path being measured.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg

from dispatcher.settings import Settings

RESULTS_DDL = """
CREATE TABLE IF NOT EXISTS bench_items (
    item bigint PRIMARY KEY,
    phase text NOT NULL,
    due_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS bench_started (
    item bigint NOT NULL,
    started_at timestamptz NOT NULL,
    pid integer NOT NULL
);
CREATE INDEX IF NOT EXISTS bench_started_item ON bench_started (item);
"""

DATABASE_ENV = "BENCH_DATABASE_URL"  # the contender's database, for its worker processes
FLUSH_S = 0.05


def clock_offset_s(conn: psycopg.Connection[Any], samples: int = 5) -> float:
    """Database clock minus local clock, from the round trip with the least delay (its
    midpoint is the best estimate of when the server read its clock)."""
    best: tuple[float, float] | None = None
    for _ in range(samples):
        before = time.time()
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        after = time.time()
        assert row is not None
        rtt, offset = after - before, float(row[0]) - (before + after) / 2
        if best is None or rtt < best[0]:
            best = (rtt, offset)
    assert best is not None
    return best[1]


def to_datetime(epoch_s: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC)


class Clock:
    """The database's clock read locally: no round trip per reading."""

    def __init__(self, database_url: str) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            self.offset_s = clock_offset_s(conn)

    def now(self) -> float:
        return time.time() + self.offset_s

    def now_dt(self) -> dt.datetime:
        return to_datetime(self.now())


class Recorder:
    """Start times of items, buffered and COPYed into `bench_started` every FLUSH_S by a
    daemon thread (one per process, started on first use)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.clock = Clock(database_url)
        self._buf: list[tuple[int, float]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="bench-recorder", daemon=True)
        self._thread.start()

    def now(self) -> float:
        return self.clock.now()

    def add(self, items: Iterable[int], at: float | None = None) -> None:
        when = self.now() if at is None else at
        with self._lock:
            self._buf.extend((item, when) for item in items)

    def _run(self) -> None:
        pid = os.getpid()
        conn: psycopg.Connection[Any] | None = None
        while True:
            time.sleep(FLUSH_S)
            with self._lock:
                batch, self._buf = self._buf, []
            if not batch:
                continue
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.database_url, autocommit=True)
                with (
                    conn.cursor() as cur,
                    cur.copy("COPY bench_started (item, started_at, pid) FROM STDIN") as copy,
                ):
                    for item, at in batch:
                        copy.write_row((item, to_datetime(at), pid))
            except psycopg.Error:
                with self._lock:  # keep them for the next flush
                    self._buf[:0] = batch
                conn = None
                time.sleep(0.5)


_recorder: Recorder | None = None
_recorder_lock = threading.Lock()


def recorder() -> Recorder:
    """This process's recorder, on the database named by BENCH_DATABASE_URL."""
    global _recorder
    with _recorder_lock:
        if _recorder is None or _recorder._thread.ident is None or not _recorder._thread.is_alive():
            _recorder = Recorder(os.environ[DATABASE_ENV])
        return _recorder


@dataclass
class Spawner:
    """The processes of one contender, each in its own process group. (`env.Procs` starts
    only `python -m dispatcher.cli` commands; these are other programs.)"""

    log_dir: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: dict[str, IO[bytes]] = field(default_factory=dict)

    def start(self, name: str, *argv: str, **extra_env: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self._logs[name] = (self.log_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, *argv],
            env={**os.environ, **self.env, **extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
            self._logs[name].close()
        self.procs.clear()
        self._logs.clear()


@dataclass(frozen=True)
class Shape:
    """The same worker count for every contender."""

    processes: int = 1
    concurrency: int = 10


class Contender(abc.ABC):
    """One system under test on its own database. `compare` calls `setup`, `start`, then
    `insert`/`enqueue` and reads `bench_started`; `stop` ends its processes."""

    name: str = "?"
    # Set when a burn-down is measured over a bounded window and extrapolated.
    burndown_window_s: float | None = None

    def __init__(self, settings: Settings, shape: Shape, log_dir: Path) -> None:
        assert settings.database_url and settings.redis_url
        self.settings = settings
        self.database_url: str = settings.database_url
        self.redis_url: str = settings.redis_url
        self.prefix = f"{settings.redis_prefix}:"
        self.shape = shape
        self.spawner = Spawner(log_dir / self.name, self.process_env())
        self._conn: psycopg.Connection[Any] | None = None
        self._next_key = 0

    def process_env(self) -> dict[str, str]:
        return {**self.settings.to_env(), DATABASE_ENV: self.database_url, "PYTHONUNBUFFERED": "1"}

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The driver's own connection to the contender's database (autocommit)."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.database_url, autocommit=True)
        return self._conn

    def keys(self, n: int) -> list[int]:
        """Item numbers for systems whose jobs carry the item as their payload."""
        first = self._next_key + 1
        self._next_key += n
        return list(range(first, first + n))

    def setup(self) -> None:
        self.conn.execute(RESULTS_DDL)
        self.setup_system()

    @abc.abstractmethod
    def setup_system(self) -> None:
        """Create the contender's own tables or schema."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the contender's processes."""

    @abc.abstractmethod
    def insert(self, dues: Sequence[dt.datetime | None]) -> list[int]:
        """Pre-insert one item per due time (None: due now) in one transaction; the item
        keys its no-op will record, in the same order."""

    @abc.abstractmethod
    def enqueue(self, due: dt.datetime) -> int:
        """Enqueue one item due at `due` in a transaction of its own, as a producer would."""

    def discard_pending(self) -> None:
        """Drop items not yet started (after a burn-down measured over a window)."""
        return None

    def stop(self) -> None:
        self.spawner.stop_all()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
