"""Shadow ZSET schedule: the per-scope switch, the parity observations of both schedules
and the shadow's own events.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shadow_flags",
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("scope"),
    )
    op.create_table(
        "parity_observations",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("lead_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt_no", sa.Integer(), nullable=False),
        sa.Column("reseller_id", sa.Text(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("path IN ('pg', 'zset')", name="parity_observations_path_ck"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "parity_observations_observed_brin",
        "parity_observations",
        ["observed_at"],
        postgresql_using="brin",
    )
    op.create_index(
        "parity_observations_lead_idx", "parity_observations", ["lead_id", "attempt_no"]
    )
    op.create_table(
        "shadow_events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("lead_id", sa.BigInteger(), nullable=True),
        sa.Column("reseller_id", sa.Text(), nullable=True),
        sa.Column(
            "detail",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("shadow_events_at_idx", "shadow_events", ["at"])


def downgrade() -> None:
    op.drop_index("shadow_events_at_idx", table_name="shadow_events")
    op.drop_table("shadow_events")
    op.drop_index("parity_observations_lead_idx", table_name="parity_observations")
    op.drop_index(
        "parity_observations_observed_brin",
        table_name="parity_observations",
        postgresql_using="brin",
    )
    op.drop_table("parity_observations")
    op.drop_table("shadow_flags")
