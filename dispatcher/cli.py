"""`switchboard`: one command per process kind, and `up` to run them all on one machine."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer

from dispatcher.settings import Settings

app = typer.Typer(help="Switchboard: outbound calls for voice agents.", no_args_is_help=True)

DatabaseOpt = Annotated[str | None, typer.Option("--database-url", help="env DATABASE_URL")]
RedisOpt = Annotated[str | None, typer.Option("--redis-url", help="env REDIS_URL")]


def _settings(**overrides: object) -> Settings:
    settings = Settings.load(**overrides)
    from dispatcher import logs

    logs.configure(settings.log_level, settings.log_json)
    return settings


@app.command()
def migrate(database_url: DatabaseOpt = None) -> None:
    """Bring the database to the newest schema (Alembic upgrade head)."""
    from db.migrate import upgrade

    settings = _settings(database_url=database_url)
    if not settings.database_url:
        raise typer.BadParameter("DATABASE_URL is not set")
    upgrade(settings.database_url)
    typer.echo("database is at head")


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="env SWITCHBOARD_API_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="env SWITCHBOARD_API_PORT")] = None,
    database_url: DatabaseOpt = None,
    redis_url: RedisOpt = None,
) -> None:
    """Run the REST API."""
    import uvicorn

    settings = _settings(
        api_host=host, api_port=port, database_url=database_url, redis_url=redis_url
    )
    os.environ.update(settings.to_env())
    # An import string, not an import: `dispatcher` never imports `web`.
    uvicorn.run(
        "web.app:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
    )


@app.command()
def scheduler(database_url: DatabaseOpt = None, redis_url: RedisOpt = None) -> None:
    """Claim due leads and hand them to the workers (run any number of these)."""
    from dispatcher import metrics
    from dispatcher import scheduler as sched
    from dispatcher.runtime import Runtime

    settings = _settings(database_url=database_url, redis_url=redis_url)
    os.environ.update(settings.to_env())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    metrics.serve(settings.scheduler_metrics_port, settings.metrics_host)
    rt = Runtime.open(settings)
    from dispatcher.shadow import SchedulerShadow

    shadow = SchedulerShadow.start_for(rt)  # idle until a shadow flag is on
    try:
        sched.run(rt, sched.sender(settings), stop)
    finally:
        if shadow is not None:
            shadow.stop()
        rt.close()


@app.command()
def worker(
    processes: Annotated[int | None, typer.Option(help="env SWITCHBOARD_WORKER_PROCESSES")] = None,
    threads: Annotated[int | None, typer.Option(help="env SWITCHBOARD_WORKER_THREADS")] = None,
    database_url: DatabaseOpt = None,
    redis_url: RedisOpt = None,
) -> None:
    """Run Dramatiq worker processes for the dispatch actors."""
    settings = _settings(
        worker_processes=processes,
        worker_threads=threads,
        database_url=database_url,
        redis_url=redis_url,
    )
    os.environ.update(settings.to_env())  # the worker processes read the same settings
    # Dramatiq reads its idle poll interval from this variable when it is imported.
    os.environ["dramatiq_worker_timeout"] = str(settings.worker_poll_ms)  # noqa: SIM112
    metrics_dir = _worker_metrics_dir(settings.worker_metrics_port)
    from dramatiq.cli import main as dramatiq_main
    from dramatiq.cli import make_argument_parser

    args = make_argument_parser().parse_args(
        [
            "dispatcher.worker",  # the actors' broker plus the worker-only middleware
            "--processes",
            str(settings.worker_processes),
            "--threads",
            str(settings.worker_threads),
            "--skip-logging",
        ]
    )
    try:
        code = dramatiq_main(args)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    sys.exit(code)


def _worker_metrics_dir(port: int) -> Path | None:
    """prometheus_client chooses multiprocess mode when it is first imported, so the
    directory must be in the environment before Dramatiq starts the worker processes (and
    this process must not import prometheus_client). One directory per port, emptied at
    start: files of dead processes would otherwise be summed in forever."""
    if not port:
        return None
    path = Path(tempfile.gettempdir()) / f"switchboard-worker-metrics-{port}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    # Dramatiq's Prometheus middleware reads `dramatiq_prom_db`; prometheus_client the other.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["dramatiq_prom_db"] = str(path)  # noqa: SIM112
    return path


@app.command()
def simulator(
    host: Annotated[str | None, typer.Option(help="env SWITCHBOARD_SIM_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="env SWITCHBOARD_SIM_PORT")] = None,
) -> None:
    """Run the telephony simulator (the default provider, test oracle and load generator)."""
    import uvicorn

    from dispatcher.simulator.app import create_app

    settings = _settings(sim_host=host, sim_port=port)
    uvicorn.run(
        create_app(settings),
        host=settings.sim_host,
        port=settings.sim_port,
        log_config=None,
        access_log=False,
    )


@app.command()
def token(
    role: Annotated[str, typer.Option(help="admin, reseller, merchant or alert_system")],
    reseller: Annotated[str | None, typer.Option("--reseller")] = None,
    merchant: Annotated[str | None, typer.Option("--merchant")] = None,
    ttl: Annotated[int, typer.Option("--ttl", help="seconds")] = 3600,
) -> None:
    """Print a signed JWT for the API."""
    from dispatcher.tokens import issue_token

    settings = Settings.load()
    try:
        typer.echo(issue_token(settings.jwt_secret, role, reseller, merchant, ttl))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.command()
def up(
    data_dir: Annotated[Path | None, typer.Option(help="env SWITCHBOARD_DATA_DIR")] = None,
    api_port: Annotated[int | None, typer.Option(help="env SWITCHBOARD_API_PORT")] = None,
    sim_port: Annotated[int | None, typer.Option(help="env SWITCHBOARD_SIM_PORT")] = None,
) -> None:
    """Everything on one machine: embedded PostgreSQL and Valkey unless DATABASE_URL /
    REDIS_URL are set, migrations, the API, a scheduler, workers and the simulator."""
    from dispatcher.up import run_up

    settings = _settings(data_dir=data_dir, api_port=api_port, sim_port=sim_port)
    run_up(settings)


def spawn(command: str, settings: Settings) -> subprocess.Popen[bytes]:
    """Start `switchboard COMMAND` as a child process with these settings."""
    env = {**os.environ, **settings.to_env()}
    return subprocess.Popen([sys.executable, "-m", "dispatcher.cli", command], env=env)


def wait_http_ok(url: str, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def new_secret() -> str:
    return secrets.token_urlsafe(32)


# --- commands that live in their own modules: one registration line each -------------
from dispatcher import importer, recovery  # noqa: E402

app.command("import")(importer.import_command)
app.command("recover")(recovery.recover_command)
from dispatcher import ops_cli  # noqa: E402

app.add_typer(ops_cli.ops_app, name="ops")
from dispatcher.parity_cli import parity_app  # noqa: E402

app.add_typer(parity_app, name="parity")
from dispatcher import shadow_cli  # noqa: E402

app.add_typer(shadow_cli.shadow_app, name="shadow")
from dispatcher.bench.cli import bench_app  # noqa: E402

app.add_typer(bench_app, name="bench")


if __name__ == "__main__":
    app()
