"""Voice alerts: alert groups (audited), alerts with their timeline, and the leads' link
to the alert they call for.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _now() -> sa.Column:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "alert_groups",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("reseller_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "members",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        _now(),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("reseller_id", "name", name="alert_groups_name_uq"),
    )
    op.create_table(
        "alert_group_changes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("reseller_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("members", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.CheckConstraint(
            "action IN ('created', 'updated', 'deleted')", name="alert_group_changes_action_ck"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "alert_group_changes_group_idx", "alert_group_changes", ["group_id", "id"], unique=False
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("reseller_id", sa.Text(), nullable=False),
        sa.Column("alert_id", sa.Text(), nullable=False),
        sa.Column("group_name", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("rounds", sa.Integer(), server_default="1", nullable=False),
        sa.Column("round_no", sa.Integer(), server_default="1", nullable=False),
        sa.Column("member_index", sa.Integer(), server_default="0", nullable=False),
        sa.Column("members", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("template", sa.Text(), nullable=False),
        sa.Column("merchant_id", sa.Text(), nullable=True),
        sa.Column(
            "payload",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("acknowledged_by", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        _now(),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("mode IN ('parallel', 'sequential')", name="alerts_mode_ck"),
        sa.CheckConstraint(
            "status IN ('calling', 'acknowledged', 'exhausted', 'resolved')",
            name="alerts_status_ck",
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    # One open alert per (reseller, alert id): a fire while it is open is deduplicated to it.
    op.create_index(
        "alerts_open_uq",
        "alerts",
        ["reseller_id", "alert_id"],
        unique=True,
        postgresql_where=sa.text("status <> 'resolved'"),
    )
    op.create_index(
        "alerts_reseller_idx", "alerts", ["reseller_id", sa.literal_column("id DESC")], unique=False
    )
    op.create_table(
        "alert_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("alert_ref", sa.BigInteger(), nullable=False),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("member_index", sa.Integer(), nullable=True),
        sa.Column("member_name", sa.Text(), nullable=True),
        sa.Column("phone", sa.Text(), nullable=True),
        sa.Column("lead_id", sa.BigInteger(), nullable=True),
        sa.Column("attempt_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.ForeignKeyConstraint(["alert_ref"], ["alerts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("alert_events_alert_idx", "alert_events", ["alert_ref", "id"], unique=False)
    op.add_column("leads", sa.Column("alert_ref", sa.BigInteger(), nullable=True))
    op.create_foreign_key("leads_alert_ref_fk", "leads", "alerts", ["alert_ref"], ["id"])
    op.create_index(
        "leads_alert_idx",
        "leads",
        ["alert_ref"],
        unique=False,
        postgresql_where=sa.text("alert_ref IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "leads_alert_idx", table_name="leads", postgresql_where=sa.text("alert_ref IS NOT NULL")
    )
    op.drop_constraint("leads_alert_ref_fk", "leads", type_="foreignkey")
    op.drop_column("leads", "alert_ref")
    op.drop_index("alert_events_alert_idx", table_name="alert_events")
    op.drop_table("alert_events")
    op.drop_index("alerts_reseller_idx", table_name="alerts")
    op.drop_index(
        "alerts_open_uq", table_name="alerts", postgresql_where=sa.text("status <> 'resolved'")
    )
    op.drop_table("alerts")
    op.drop_index("alert_group_changes_group_idx", table_name="alert_group_changes")
    op.drop_table("alert_group_changes")
    op.drop_table("alert_groups")
