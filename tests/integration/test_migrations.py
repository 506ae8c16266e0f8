"""Alembic: upgrade from an empty database to head, downgrade back to empty, and again."""

from __future__ import annotations

import uuid

import psycopg

from db.migrate import downgrade, upgrade
from dispatcher.embedded import with_database

TABLES = {
    "alert_events",
    "alert_group_changes",
    "alert_groups",
    "alerts",
    "call_attempts",
    "controls",
    "dnc",
    "fair_shares",
    "lead_events",
    "leads",
    "outbound_numbers",
    "parity_observations",
    "shadow_events",
    "shadow_flags",
    "templates",
    "webhook_events",
}


OPS_VIEWS = {
    "attempts_per_lead",
    "channel_use",
    "due_backlog",
    "due_backlog_total",
    "failures",
    "outcomes_hourly",
    "queue_depth",
    "stuck_leads",
}


def _ops_views(url: str) -> set[str]:
    """The views of the `ops` schema (revision 0002) that the read-only role may read."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'ops' AND c.relkind = 'v'"
            " AND has_table_privilege('switchboard_ops_reader', c.oid, 'SELECT')"
        ).fetchall()
    return {r[0] for r in rows}


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'alembic_version'"
        ).fetchall()
    return {r[0] for r in rows}


def test_upgrade_downgrade_upgrade(pg_server_url: str) -> None:
    name = f"sb_migr_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(pg_server_url, name)
    try:
        assert _tables(url) == set()
        upgrade(url)
        assert _tables(url) == TABLES
        with psycopg.connect(url) as conn:
            templates = conn.execute("SELECT name FROM templates ORDER BY name").fetchall()
            claim_index = conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'leads_claim_idx'"
            ).fetchone()
        assert [t[0] for t in templates] == ["alert", "default"]
        assert claim_index is not None and "WHERE (status = 'BACKLOG'::text)" in claim_index[0]
        assert _ops_views(url) == OPS_VIEWS
        downgrade(url, "0001")
        assert {"leads", "call_attempts", "lead_events"} <= _tables(url)
        assert _ops_views(url) == set()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT to_regnamespace('ops')").fetchone() == (None,)
        upgrade(url)
        assert _ops_views(url) == OPS_VIEWS
        downgrade(url)
        assert _tables(url) == set()
        upgrade(url)
        assert _tables(url) == TABLES
        assert _ops_views(url) == OPS_VIEWS
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_models_match_the_migrations(database_url: str) -> None:
    """The SQLAlchemy models and the migrated schema describe the same tables."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from db.migrate import sqlalchemy_url
    from db.models import Base

    engine = create_engine(sqlalchemy_url(database_url))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
