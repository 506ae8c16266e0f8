"""`switchboard up`: the whole system on one machine, stopped cleanly by Ctrl-C."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import threading
from pathlib import Path

import typer

from db.migrate import upgrade
from db.pool import connect
from dispatcher.cli import new_secret, spawn, wait_http_ok
from dispatcher.embedded import EmbeddedPostgres, EmbeddedValkey
from dispatcher.settings import Settings
from dispatcher.tokens import issue_token

# A simulator number so a fresh install can place calls at once; add real ones via the API.
DEMO_NUMBER = "+15005550006"
PROCESSES = ("simulator", "api", "scheduler", "worker")


def run_up(settings: Settings) -> None:
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    servers: list[EmbeddedPostgres | EmbeddedValkey] = []
    children: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        changes: dict[str, object] = {}
        if not settings.database_url:
            pg = EmbeddedPostgres(data_dir / "postgres")
            servers.append(pg)
            changes["database_url"] = pg.start()
        if not settings.redis_url:
            valkey = EmbeddedValkey(data_dir)
            servers.append(valkey)
            changes["redis_url"] = valkey.start()
        if settings.jwt_secret == Settings().jwt_secret:
            changes["jwt_secret"] = _persistent_secret(data_dir / "jwt_secret")
        settings = dataclasses.replace(settings, **changes)  # type: ignore[arg-type]
        assert settings.database_url
        upgrade(settings.database_url)
        _ensure_demo_number(settings.database_url)
        children = [spawn(name, settings) for name in PROCESSES]
        api_url = f"http://{settings.api_host}:{settings.api_port}"
        if not wait_http_ok(f"{api_url}/health", timeout_s=60):
            typer.echo("the API did not become healthy; stopping", err=True)
            return
        _print_banner(settings, api_url)
        while not stop.wait(0.5):
            dead = [
                (n, c.returncode)
                for n, c in zip(PROCESSES, children, strict=True)
                if c.poll() is not None
            ]
            if dead:
                typer.echo(f"a process exited: {dead}; stopping", err=True)
                break
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        for server in reversed(servers):
            server.stop()
        typer.echo("stopped")


def _persistent_secret(path: Path) -> str:
    """A random JWT secret kept in the data dir, so tokens outlive a restart."""
    if not path.exists():
        path.write_text(new_secret())
        path.chmod(0o600)
    return path.read_text().strip()


def _ensure_demo_number(database_url: str) -> None:
    with connect(database_url) as conn:
        if conn.execute("SELECT 1 FROM outbound_numbers LIMIT 1").fetchone() is None:
            conn.execute(
                "INSERT INTO outbound_numbers (e164, provider, max_channels)"
                " VALUES (%s, 'simulator', 4)",
                (DEMO_NUMBER,),
            )


def _print_banner(settings: Settings, api_url: str) -> None:
    token = issue_token(settings.jwt_secret, "admin", ttl_s=30 * 24 * 3600)
    typer.echo(
        "\n".join(
            [
                "Switchboard is up.",
                f"  API        {api_url}",
                f"  API docs   {api_url}/schema",
                f"  simulator  {settings.simulator_url}",
                f"  data       {settings.data_dir.resolve()}",
                f"  admin token (30 days):\n  {token}",
                "Press Ctrl-C to stop.",
            ]
        )
    )
