"""Produce the sample parity report of ops/parity/: a rehearsal of shadow mode with every
fault the report explains, on real Switchboard processes (API, two schedulers, two
workers, the simulator) against a fresh PostgreSQL database and a Redis of its own.

Traffic: leads of three resellers due over SPREAD_S, a third of them retried once or
twice; one Redis FLUSHALL, then a SIGKILL of the scheduler holding the promoter lock.
Then exactly the README's command, once per format:

    switchboard parity report --since <start, ISO> --format md --out ops/parity/sample.md
    switchboard parity report --since <start, ISO> --format html --out ops/parity/sample.html

Run it through ops/parity/make_sample.sh (it sets PG_URL and the paths).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import redis

from tests.e2e.harness import private_redis, wait_until
from tests.e2e.test_shadow_parity import post_leads, shadow_cli, start_system, wait_final

N_LEADS = int(os.environ.get("SAMPLE_LEADS", "900"))
SPREAD_S = float(os.environ.get("SAMPLE_SPREAD_S", "45"))
OUT = Path(os.environ.get("SAMPLE_OUT", "ops/parity"))


def switchboard(env: dict[str, str], *args: str) -> None:
    """The CLI as an operator runs it (`switchboard ...` is `python -m dispatcher.cli`)."""
    print("$ switchboard " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "dispatcher.cli", *args], env=env, check=True)


def main() -> None:
    server = os.environ.get("PG_URL", "postgresql://postgres@127.0.0.1/postgres")
    name = f"sb_parity_sample_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = server.rsplit("/", 1)[0] + f"/{name}"
    env = {**os.environ, "DATABASE_URL": database_url}
    try:
        switchboard(env, "migrate")
        with tempfile.TemporaryDirectory() as tmp, private_redis(Path(tmp) / "redis") as url:
            rehearse(database_url, url, Path(tmp), env)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rehearse(database_url: str, redis_url: str, tmp: Path, env: dict[str, str]) -> None:
    logs = tmp / "logs"
    logs.mkdir()
    system = start_system(
        database_url, redis_url, logs, schedulers=2, shadow_backlog_reconcile_s=3.0
    )
    try:
        start = dt.datetime.now(dt.UTC).replace(microsecond=0)
        print(shadow_cli(system, "on"), end="", flush=True)
        leads = post_leads(
            system, "909", ("acme", "globex", "initech"), N_LEADS, 3.0, SPREAD_S, channels=100
        )
        client = redis.Redis.from_url(redis_url)
        time.sleep(SPREAD_S / 3)
        print("FLUSHALL", flush=True)
        client.flushall()
        time.sleep(SPREAD_S / 3)
        lock = f"{system.settings.shadow_prefix}promoter:lock"
        wait_until(lambda: client.get(lock) is not None, 30, 0.1, "a promoter leader")
        holder = client.get(lock)
        assert holder is not None
        pid = int(holder.decode().split(":")[1])
        victim = next(n for n, p in system.procs.items() if p.pid == pid)
        print(f"SIGKILL {victim} (promoter leader {holder.decode()})", flush=True)
        system.kill(victim, signal.SIGKILL)
        client.close()
        wait_final(leads, database_url, timeout_s=SPREAD_S + 600)
        time.sleep(4.0)  # a reconcile pass and the last observations' flush
        print(shadow_cli(system, "status"), end="", flush=True)
    finally:
        system.stop_all()
    since = start.isoformat().replace("+00:00", "Z")
    for fmt in ("md", "html"):
        out = OUT / f"sample.{fmt}"
        switchboard(env, "parity", "report", "--since", since, "--format", fmt, "--out", str(out))


if __name__ == "__main__":
    main()
