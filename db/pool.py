"""psycopg connection pools; every process opens one and shares it between threads."""

from __future__ import annotations

from psycopg import Connection
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool


def open_pool(database_url: str, *, min_size: int = 1, max_size: int = 10) -> ConnectionPool:
    pool: ConnectionPool = ConnectionPool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"row_factory": dict_row, "autocommit": False},
        open=False,
        name="switchboard",
    )
    pool.open(wait=True, timeout=30)
    return pool


def connect(database_url: str, *, autocommit: bool = False) -> Connection:
    """A single connection outside any pool (LISTEN, migrations, CLI one-shots)."""
    return Connection.connect(database_url, row_factory=dict_row, autocommit=autocommit)
