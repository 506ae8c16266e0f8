"""Switchboard's storage: SQLAlchemy models, Alembic migrations and connection pools."""
