"""Where the tests' PostgreSQL and Redis come from, and a fresh database per module.

In order: SWITCHBOARD_TEST_DATABASE_URL / SWITCHBOARD_TEST_REDIS_URL; testcontainers
when a Docker engine answers; otherwise the embedded servers, so a plain `pytest` works
on a machine with nothing but Python.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from db.migrate import upgrade
from dispatcher.embedded import EmbeddedPostgres, EmbeddedValkey, with_database

POSTGRES_IMAGE = "postgres:16.4-alpine"
REDIS_IMAGE = "redis:7.4.1-alpine"


def _docker_answers() -> bool:
    """A Docker engine answers `docker info` (the client alone is not enough)."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def _servers_dir() -> Iterator[Path]:
    """Outside pytest's basetemp, which a concurrent pytest run may rotate away while the
    embedded servers still live in it."""
    path = Path(tempfile.mkdtemp(prefix="switchboard-test-servers-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server_url(_servers_dir: Path) -> Iterator[str]:
    """A superuser URL to a PostgreSQL server the tests may create databases on."""
    if url := os.environ.get("SWITCHBOARD_TEST_DATABASE_URL"):
        yield url
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer(POSTGRES_IMAGE, driver=None) as pg:
            yield pg.get_connection_url()
        return
    server = EmbeddedPostgres(_servers_dir / "pg")
    try:
        yield server.start(dbname="postgres")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server_url(_servers_dir: Path) -> Iterator[str]:
    if url := os.environ.get("SWITCHBOARD_TEST_REDIS_URL"):
        yield url
        return
    if _docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer(REDIS_IMAGE) as rc:
            host, port = rc.get_container_host_ip(), rc.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
        return
    server = EmbeddedValkey(_servers_dir / "valkey")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def template_database(pg_server_url: str) -> Iterator[str]:
    """A database migrated to head once per session; each module clones it."""
    name = f"sb_template_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    upgrade(with_database(pg_server_url, name))
    yield name
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_database(pg_server_url: str, template: str) -> str:
    name = f"sb_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return with_database(pg_server_url, name)


def drop_database(pg_server_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[-1].split("?", 1)[0]
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def database_url(pg_server_url: str, template_database: str) -> Iterator[str]:
    """A database of this test module's own, at the head migration."""
    url = fresh_database(pg_server_url, template_database)
    yield url
    drop_database(pg_server_url, url)


_redis_dbs = iter(range(1, 10_000))


@pytest.fixture(scope="module")
def redis_url(redis_server_url: str) -> Iterator[str]:
    """A Redis database of this module's own (numbers 1-15 in turn), empty at the start."""
    base = (
        redis_server_url.rsplit("/", 1)[0] if redis_server_url.count("/") > 2 else redis_server_url
    )
    url = f"{base}/{next(_redis_dbs) % 15 + 1}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    with contextlib.suppress(redis.RedisError):
        client.flushdb()
    client.close()
