"""Where a benchmark runs: a PostgreSQL server it may create databases on, a Redis, and
real Switchboard processes started the way an operator starts them.

The servers come from --database-url/--redis-url (or DATABASE_URL/REDIS_URL); with
neither, the embedded PostgreSQL and Valkey of `switchboard up`. Each scenario gets a
fresh database and its own Redis key prefix, dropped afterwards, so a benchmark never
touches a deployment's data.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg
import redis

from db.migrate import upgrade
from dispatcher.embedded import EmbeddedPostgres, EmbeddedValkey, with_database
from dispatcher.settings import Settings

BENCH_TEMPLATE = "bench"  # no calling window, no retries, no cap: the engine, not the policy


@dataclass
class BenchEnv:
    server_url: str  # a superuser URL on the server (any database)
    redis_url: str
    work_dir: Path

    @classmethod
    @contextlib.contextmanager
    def open(
        cls, database_url: str | None, redis_url: str | None, work_dir: Path
    ) -> Iterator[BenchEnv]:
        work_dir.mkdir(parents=True, exist_ok=True)
        embedded: list[EmbeddedPostgres | EmbeddedValkey] = []
        try:
            if not database_url:
                pg = EmbeddedPostgres(work_dir / "embedded")
                embedded.append(pg)
                database_url = pg.start(dbname="postgres")
            if not redis_url:
                vk = EmbeddedValkey(work_dir / "embedded")
                embedded.append(vk)
                redis_url = vk.start()
            yield cls(database_url, redis_url, work_dir)
        finally:
            for server in reversed(embedded):
                server.stop()

    @contextlib.contextmanager
    def database(self, name: str) -> Iterator[str]:
        """A fresh, migrated database with the bench template; dropped afterwards."""
        dbname = f"sb_bench_{name}_{os.getpid()}"
        with psycopg.connect(self.server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{dbname}"')
        url = with_database(self.server_url, dbname)
        try:
            upgrade(url)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO templates (name, retry) VALUES (%s, %s)",
                    (BENCH_TEMPLATE, '{"max_attempts": 1}'),
                )
            yield url
        finally:
            with psycopg.connect(self.server_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    def settings(self, database_url: str, **overrides: Any) -> Settings:
        """Settings for the processes of one run: quiet, no metrics ports, own prefix."""
        base: dict[str, Any] = {
            "database_url": database_url,
            "redis_url": self.redis_url,
            "redis_prefix": f"bench-{uuid.uuid4().hex[:8]}",
            "scheduler_metrics_port": 0,
            "worker_metrics_port": 0,
            "monitor_interval_s": 0.0,
            "log_level": "WARNING",
        }
        return Settings.load({}, **{**base, **overrides})

    def forget_redis(self, settings: Settings) -> None:
        """Delete every key of a run's prefix (channel slots, Dramatiq's queues)."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            for key in client.scan_iter(match=f"{settings.redis_prefix}*", count=1000):
                client.delete(key)
        finally:
            client.close()


@dataclass
class Procs:
    """Switchboard processes of one run, each `python -m dispatcher.cli COMMAND` in its own
    process group (a SIGKILL takes a worker's forks with it)."""

    settings: Settings
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: dict[str, IO[bytes]] = field(default_factory=dict)

    def start(self, name: str, command: str, *args: str, **env: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self._logs[name] = (self.log_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", command, *args],
            env={**os.environ, **self.settings.to_env(), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        self._logs.pop(name).close()

    def stop_all(self) -> None:
        """SIGKILL: a run's database is dropped next, so there is nothing to drain."""
        for name in list(self.procs):
            self.kill(name)

    def check_alive(self) -> None:
        """Fail loudly when a process died on its own (its log says why)."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def wait_until(check: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval_s)
    return bool(check())
