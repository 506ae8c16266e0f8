"""Core schema: leads, attempts, events, numbers, templates, do-not-call, controls.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 12:56:26.015368
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "controls",
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("scope_id", sa.Text(), server_default="", nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("scope IN ('global', 'reseller', 'number')", name="controls_scope_ck"),
        sa.PrimaryKeyConstraint("scope", "scope_id"),
    )
    op.create_table(
        "dnc",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("phone", sa.Text(), nullable=False),
        sa.Column("reseller_id", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "dnc_phone_uq",
        "dnc",
        ["phone", sa.literal_column("coalesce(reseller_id, '')")],
        unique=True,
    )
    op.create_table(
        "outbound_numbers",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("e164", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), server_default="simulator", nullable=False),
        sa.Column("max_channels", sa.Integer(), nullable=False),
        sa.Column("cps", sa.Numeric(), nullable=True),
        sa.Column("reseller_id", sa.Text(), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default="true", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("cps IS NULL OR cps > 0", name="numbers_cps_ck"),
        sa.CheckConstraint("max_channels >= 1", name="numbers_channels_ck"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("e164"),
    )
    op.create_table(
        "templates",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("calling_window", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("retry", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("frequency_cap", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("execution_mode", sa.Text(), server_default="telephony", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "execution_mode IN ('telephony', 'telephony_alert')", name="templates_mode_ck"
        ),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "webhook_events",
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("provider", "event_id"),
    )
    op.create_table(
        "leads",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("reseller_id", sa.Text(), nullable=False),
        sa.Column("merchant_id", sa.Text(), nullable=True),
        sa.Column("phone", sa.Text(), nullable=False),
        sa.Column("template", sa.Text(), nullable=False),
        sa.Column("execution_mode", sa.Text(), server_default="telephony", nullable=False),
        sa.Column("customer_name", sa.Text(), nullable=True),
        sa.Column(
            "payload",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("priority", sa.SmallInteger(), server_default="5", nullable=False),
        sa.Column("timezone", sa.Text(), nullable=True),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("max_attempts", sa.SmallInteger(), nullable=True),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("request_hash", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempt_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("fence", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("current_attempt_id", sa.UUID(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('BACKLOG', 'QUEUED', 'DIALING', 'IN_CALL', 'COMPLETED', 'FAILED', 'EXPIRED', 'SKIPPED', 'CANCELLED')",
            name="leads_status_ck",
        ),
        sa.CheckConstraint(
            "max_attempts IS NULL OR max_attempts BETWEEN 1 AND 20", name="leads_max_attempts_ck"
        ),
        sa.CheckConstraint("priority BETWEEN 1 AND 10", name="leads_priority_ck"),
        sa.ForeignKeyConstraint(["template"], ["templates.name"], onupdate="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "leads_active_idx",
        "leads",
        ["status", "lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('QUEUED', 'DIALING', 'IN_CALL')"),
    )
    op.create_index(
        "leads_claim_idx",
        "leads",
        ["reseller_id", sa.literal_column("priority DESC"), "next_attempt_at", "id"],
        unique=False,
        postgresql_where=sa.text("status = 'BACKLOG'"),
    )
    op.create_index(
        "leads_oldest_idx",
        "leads",
        ["reseller_id", "next_attempt_at", "id"],
        unique=False,
        postgresql_where=sa.text("status = 'BACKLOG'"),
    )
    op.create_index(
        "leads_due_idx",
        "leads",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status = 'BACKLOG'"),
    )
    op.create_index(
        "leads_idempotency_uq",
        "leads",
        ["reseller_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index("leads_phone_idx", "leads", ["phone"], unique=False)
    op.create_index(
        "leads_reseller_id_idx",
        "leads",
        ["reseller_id", sa.literal_column("id DESC")],
        unique=False,
    )
    op.create_table(
        "call_attempts",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("lead_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt_no", sa.Integer(), nullable=False),
        sa.Column("reseller_id", sa.Text(), nullable=False),
        sa.Column("phone", sa.Text(), nullable=False),
        sa.Column("number_id", sa.BigInteger(), nullable=False),
        sa.Column("number", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("provider_call_id", sa.Text(), nullable=True),
        sa.Column("call_state", sa.Text(), server_default="created", nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("answered_by", sa.Text(), nullable=True),
        sa.Column("digits", sa.Text(), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("placed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_s", sa.Numeric(), nullable=True),
        sa.CheckConstraint(
            "outcome IS NULL OR outcome IN ('answered', 'completed', 'no_answer', 'busy', 'failed', 'voicemail', 'rejected', 'invalid', 'canceled', 'unknown')",
            name="attempts_outcome_ck",
        ),
        sa.ForeignKeyConstraint(["lead_id"], ["leads.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["number_id"],
            ["outbound_numbers.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "call_attempts_lead_uq", "call_attempts", ["lead_id", "attempt_no"], unique=True
    )
    op.create_index(
        "call_attempts_open_idx",
        "call_attempts",
        ["number_id"],
        unique=False,
        postgresql_where=sa.text("ended_at IS NULL"),
    )
    op.create_index(
        "call_attempts_phone_idx",
        "call_attempts",
        ["reseller_id", "phone", "started_at"],
        unique=False,
    )
    op.create_index(
        "call_attempts_provider_call_idx", "call_attempts", ["provider_call_id"], unique=False
    )
    op.create_table(
        "lead_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("lead_id", sa.BigInteger(), nullable=False),
        sa.Column("from_status", sa.Text(), nullable=True),
        sa.Column("to_status", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempt_id", sa.UUID(), nullable=True),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.ForeignKeyConstraint(["lead_id"], ["leads.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("lead_events_lead_idx", "lead_events", ["lead_id", "id"], unique=False)

    op.create_table(
        "fair_shares",
        sa.Column("reseller_id", sa.Text(), nullable=False),
        sa.Column("weight", sa.Float(), server_default="1", nullable=False),
        sa.Column("vtime", sa.Float(), server_default="0", nullable=False),
        sa.Column("claimed", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint("weight > 0", name="fair_shares_weight_ck"),
        sa.PrimaryKeyConstraint("reseller_id"),
    )
    # Leads are updated constantly: vacuum them early so dead tuples do not pile up.
    op.execute(
        "ALTER TABLE leads SET (autovacuum_vacuum_scale_factor = 0.02,"
        " autovacuum_analyze_scale_factor = 0.02, fillfactor = 80)"
    )
    templates = sa.table(
        "templates",
        sa.column("name", sa.Text),
        sa.column("calling_window", postgresql.JSONB),
        sa.column("retry", postgresql.JSONB),
        sa.column("frequency_cap", postgresql.JSONB),
        sa.column("execution_mode", sa.Text),
    )
    op.bulk_insert(
        templates,
        [
            {
                "name": "default",
                "calling_window": {
                    "start": "09:00",
                    "end": "21:00",
                    "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                },
                "retry": {
                    "max_attempts": 3,
                    "retry_on": ["busy", "no_answer", "failed", "voicemail"],
                    "delay_s": 7200,
                    "backoff": "fixed",
                },
                "frequency_cap": {"per_phone_per_day": 3},
                "execution_mode": "telephony",
            },
            {
                "name": "alert",
                "calling_window": None,
                "retry": {
                    "max_attempts": 3,
                    "retry_on": ["no_answer", "busy"],
                    "delay_s": 60,
                    "backoff": "fixed",
                },
                "frequency_cap": None,
                "execution_mode": "telephony_alert",
            },
        ],
    )


def downgrade() -> None:
    op.drop_table("fair_shares")
    op.drop_index(
        "leads_oldest_idx", table_name="leads", postgresql_where=sa.text("status = 'BACKLOG'")
    )
    op.drop_index("lead_events_lead_idx", table_name="lead_events")
    op.drop_table("lead_events")
    op.drop_index("call_attempts_provider_call_idx", table_name="call_attempts")
    op.drop_index("call_attempts_phone_idx", table_name="call_attempts")
    op.drop_index(
        "call_attempts_open_idx",
        table_name="call_attempts",
        postgresql_where=sa.text("ended_at IS NULL"),
    )
    op.drop_index("call_attempts_lead_uq", table_name="call_attempts")
    op.drop_table("call_attempts")
    op.drop_index("leads_reseller_id_idx", table_name="leads")
    op.drop_index("leads_phone_idx", table_name="leads")
    op.drop_index(
        "leads_idempotency_uq",
        table_name="leads",
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.drop_index(
        "leads_due_idx", table_name="leads", postgresql_where=sa.text("status = 'BACKLOG'")
    )
    op.drop_index(
        "leads_claim_idx", table_name="leads", postgresql_where=sa.text("status = 'BACKLOG'")
    )
    op.drop_index(
        "leads_active_idx",
        table_name="leads",
        postgresql_where=sa.text("status IN ('QUEUED', 'DIALING', 'IN_CALL')"),
    )
    op.drop_table("leads")
    op.drop_table("webhook_events")
    op.drop_table("templates")
    op.drop_table("outbound_numbers")
    op.drop_index("dnc_phone_uq", table_name="dnc")
    op.drop_table("dnc")
    op.drop_table("controls")
