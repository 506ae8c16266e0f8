"""Real Switchboard processes for end-to-end tests: API, scheduler, workers, simulator,
each a `python -m dispatcher.cli COMMAND` child in its own process group, talking over
real HTTP to each other and to a real PostgreSQL and Redis."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dispatcher.settings import Settings
from dispatcher.tokens import issue_token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The setting that holds each process kind's Prometheus port.
METRICS_PORT_ENV = {
    command: next(f for f in dataclasses.fields(Settings) if f.name == name).metadata["env"]
    for command, name in (
        ("scheduler", "scheduler_metrics_port"),
        ("worker", "worker_metrics_port"),
    )
}


@dataclass
class System:
    settings: Settings
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # A scheduler or worker's metrics port, by process name: kept across a restart.
    metrics_ports: dict[str, int] = field(default_factory=dict)
    _logs: dict[str, Any] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    @property
    def sim_url(self) -> str:
        return self.settings.simulator_url

    def start(self, name: str, command: str, *args: str) -> None:
        env = {**os.environ, **self.settings.to_env()}
        if command in METRICS_PORT_ENV:
            port = self.metrics_ports.setdefault(name, free_port())
            env[METRICS_PORT_ENV[command]] = str(port)
        log = self._logs[name] = (self.log_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", command, *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill takes its children too
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)
        self._logs.pop(name).close()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)

    def wait_ready(self, timeout_s: float = 60) -> None:
        for url in (f"{self.api_url}/health", f"{self.sim_url}/sim/stats"):
            deadline = time.monotonic() + timeout_s
            while True:
                self._check_alive()
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url} not ready; logs in {self.log_dir}")
                time.sleep(0.2)

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text()[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def metrics_url(self, name: str) -> str:
        """Where the scheduler or worker process `name` serves its Prometheus metrics."""
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    def admin(self) -> httpx.Client:
        token = issue_token(self.settings.jwt_secret, "admin")
        return httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

    def sim(self) -> httpx.Client:
        return httpx.Client(base_url=self.sim_url, timeout=30)


def e2e_settings(database_url: str, redis_url: str, **overrides: Any) -> Settings:
    api_port, sim_port = free_port(), free_port()
    base: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "api_port": api_port,
        "sim_port": sim_port,
        "redis_prefix": f"e2e{api_port}",
        "lease_s": 5.0,
        "max_call_s": 3.0,
        "call_grace_s": 2.0,
        "reconcile_interval_s": 1.0,
        "no_channel_delay_s": 0.2,
        "worker_threads": 8,
        "log_level": "INFO",
        # Off unless `System.start` gives the process a port of its own.
        "scheduler_metrics_port": 0,
        "worker_metrics_port": 0,
        "metrics_sample_s": 1.0,
    }
    base.update(overrides)
    return Settings.load({}, **base)


def wait_until(
    check: Callable[[], bool], timeout_s: float, interval_s: float = 0.5, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --- the standard scenario: scripted outcomes, a 1 s retry, four numbers -----------------

RESELLERS = ("r1", "r2", "r3")
# (script of successive call outcomes, expected final status, attempts, lead outcome)
SCRIPTS: tuple[tuple[list[str], str, int, str], ...] = (
    (["answered"], "COMPLETED", 1, "completed"),
    (["busy", "answered"], "COMPLETED", 2, "completed"),
    (["no_answer", "no_answer", "no_answer"], "FAILED", 3, "no_answer"),
    (["invalid"], "FAILED", 1, "invalid"),
    (["voicemail", "busy", "answered"], "COMPLETED", 3, "completed"),
    (["failed", "no_answer", "busy"], "FAILED", 3, "busy"),
    (["rejected"], "FAILED", 1, "rejected"),
)
NUMBERS = (  # e164, channels, reseller (None: shared pool)
    ("+12025550101", 2, "r1"),
    ("+12025550102", 4, None),
    ("+12025550103", 6, None),
    ("+12025550104", 8, None),
)


@dataclass(frozen=True)
class Expected:
    phone: str
    reseller: str
    status: str
    attempts: int
    outcome: str


def plan(n_leads: int) -> tuple[dict[str, list[str]], list[Expected]]:
    script: dict[str, list[str]] = {}
    expected: list[Expected] = []
    for i in range(n_leads):
        phone = f"+1415555{i:04d}"
        outcomes, status, attempts, outcome = SCRIPTS[i % len(SCRIPTS)]
        script[phone] = outcomes
        expected.append(Expected(phone, RESELLERS[i % len(RESELLERS)], status, attempts, outcome))
    return script, expected


def set_up_world(
    system: System, n_leads: int, sim_config: dict[str, Any] | None = None
) -> list[Expected]:
    script, expected = plan(n_leads)
    with system.sim() as sim:
        sim.post("/sim/reset").raise_for_status()
        config = {"ring_ms": [10, 40], "talk_ms": [20, 60], "seed": 7, **(sim_config or {})}
        sim.put("/sim/config", json=config).raise_for_status()
        sim.put("/sim/script", json=script).raise_for_status()
    with system.admin() as api:
        template = {
            "calling_window": None,
            "retry": {
                "max_attempts": 3,
                "retry_on": ["busy", "no_answer", "failed", "voicemail"],
                "delay_s": 1,
                "backoff": "fixed",
            },
            "frequency_cap": None,
            "execution_mode": "telephony",
        }
        api.put("/v1/templates/e2e", json=template).raise_for_status()
        for e164, channels, reseller in NUMBERS:
            body = {"e164": e164, "provider": "simulator", "max_channels": channels}
            body["reseller_id"] = reseller
            api.post("/v1/numbers", json=body).raise_for_status()
        for reseller in RESELLERS:
            mine = [e for e in expected if e.reseller == reseller]
            for part in chunks(mine, 1000):
                leads = [
                    {"phone": e.phone, "template": "e2e", "reseller_id": reseller} for e in part
                ]
                resp = api.post("/v1/leads/bulk", json={"leads": leads})
                resp.raise_for_status()
                assert resp.json()["created"] == len(part), resp.json()["errors"][:3]
    return expected


def final_count(database_url: str) -> int:
    import psycopg

    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM leads WHERE status IN"
            " ('COMPLETED', 'FAILED', 'EXPIRED', 'SKIPPED', 'CANCELLED')"
        ).fetchone()
    return int(row[0]) if row else 0


def lead_results(database_url: str) -> dict[str, tuple[str, int, str | None]]:
    import psycopg

    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT phone, status, attempt_count, outcome FROM leads").fetchall()
    return {phone: (status, attempts, outcome) for phone, status, attempts, outcome in rows}


def assert_ended_as_scripted(database_url: str, expected: list[Expected]) -> None:
    """Every lead's (status, attempts, outcome) is what its script implies."""
    results = lead_results(database_url)
    wrong = {
        e.phone: results[e.phone]
        for e in expected
        if results[e.phone] != (e.status, e.attempts, e.outcome)
    }
    assert wrong == {}


@contextlib.contextmanager
def private_redis(directory: Path) -> Iterator[str]:
    """A Redis server of the test's own (`redis-server` on a free port, no persistence),
    for faults such as FLUSHALL that must not touch the shared test server's databases."""
    import shutil

    import redis as redis_lib

    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    assert binary, "redis-server (or valkey-server) must be installed"
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    log = (directory / "redis.log").open("ab")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=directory,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis_lib.Redis.from_url(url)
    try:
        wait_until(lambda: _pings(client), timeout_s=10, interval_s=0.05, what="redis-server")
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False
