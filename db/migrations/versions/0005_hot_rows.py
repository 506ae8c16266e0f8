"""Hot rows: vacuum the tables every call updates early and fast, whatever their size.

Every status change of a lead updates `status` (in the predicates of the claim indexes and
in leads_active_idx) and often `next_attempt_at` / `lease_expires_at` (indexed): none of
these updates is HOT, so each leaves a dead heap tuple and a dead entry in every index
of leads. call_attempts likewise: `provider_call_id` is indexed and `ended_at` is in the
predicate of call_attempts_open_idx. Fillfactor cannot make them HOT; what helps is
vacuuming them as soon as a few thousand dead tuples exist (a threshold, not a share of
a table that also holds millions of finished rows) and letting that vacuum run about ten
times faster than the default cost budget, so that after a long-held snapshot is released
the backlog of dead tuples is cleared in seconds.

Not changed here, and global: autovacuum_naptime (1 min by default) bounds how soon a
vacuum can start after a release; see the benchmark report.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Kept equal to db.models.STORAGE_PARAMETERS (a test compares the database with it).
HOT = {
    "autovacuum_vacuum_scale_factor": "0",
    "autovacuum_vacuum_threshold": "5000",
    "autovacuum_vacuum_cost_limit": "2000",
    "autovacuum_vacuum_cost_delay": "1",
}
SETTINGS = {
    "leads": {**HOT, "autovacuum_analyze_scale_factor": "0.02", "fillfactor": "80"},
    "call_attempts": HOT,
    # Append-only: vacuumed for its visibility map (index-only scans), not for dead rows.
    "lead_events": {
        "autovacuum_vacuum_insert_scale_factor": "0",
        "autovacuum_vacuum_insert_threshold": "100000",
        "autovacuum_vacuum_cost_limit": "2000",
        "autovacuum_vacuum_cost_delay": "1",
    },
}
# What 0001 set on leads (the other tables had only the server's defaults).
BEFORE = {
    "leads": {
        "autovacuum_vacuum_scale_factor": "0.02",
        "autovacuum_analyze_scale_factor": "0.02",
        "fillfactor": "80",
    }
}


def upgrade() -> None:
    for table, params in SETTINGS.items():
        op.execute(
            f"ALTER TABLE {table} SET ({', '.join(f'{k} = {v}' for k, v in params.items())})"
        )


def downgrade() -> None:
    for table, params in SETTINGS.items():
        before = BEFORE.get(table, {})
        reset = [k for k in params if k not in before]
        if reset:
            op.execute(f"ALTER TABLE {table} RESET ({', '.join(reset)})")
        if before:
            op.execute(
                f"ALTER TABLE {table} SET ({', '.join(f'{k} = {v}' for k, v in before.items())})"
            )
