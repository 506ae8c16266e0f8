"""SQLAlchemy 2.0 models: the schema's single description, used by Alembic and by tests.

The hot paths (claim, lifecycle transitions, webhook) run hand-written SQL through
psycopg; these models document the tables and drive migrations.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

LEAD_STATUSES = (
    "BACKLOG",
    "QUEUED",
    "DIALING",
    "IN_CALL",
    "COMPLETED",
    "FAILED",
    "EXPIRED",
    "SKIPPED",
    "CANCELLED",
)
OUTCOMES = (
    "answered",
    "completed",
    "no_answer",
    "busy",
    "failed",
    "voicemail",
    "rejected",
    "invalid",
    "canceled",
    "unknown",
)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class Base(DeclarativeBase):
    pass


class Template(Base):
    __tablename__ = "templates"
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    calling_window: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    retry: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    frequency_cap: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    execution_mode: Mapped[str] = mapped_column(Text, nullable=False, server_default="telephony")
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = _now()
    __table_args__ = (
        CheckConstraint(
            "execution_mode IN ('telephony', 'telephony_alert')", name="templates_mode_ck"
        ),
    )


class Lead(Base):
    __tablename__ = "leads"
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    reseller_id: Mapped[str] = mapped_column(Text, nullable=False)
    merchant_id: Mapped[str | None] = mapped_column(Text)
    phone: Mapped[str] = mapped_column(Text, nullable=False)
    template: Mapped[str] = mapped_column(
        Text, ForeignKey("templates.name", onupdate="CASCADE"), nullable=False
    )
    execution_mode: Mapped[str] = mapped_column(Text, nullable=False, server_default="telephony")
    customer_name: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    priority: Mapped[int] = mapped_column(SmallInteger, nullable=False, server_default="5")
    timezone: Mapped[str | None] = mapped_column(Text)
    not_before: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    max_attempts: Mapped[int | None] = mapped_column(SmallInteger)
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    request_hash: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    attempt_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    outcome: Mapped[str | None] = mapped_column(Text)
    fence: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    current_attempt_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # The alert this lead calls for (voice alerts); NULL for ordinary leads.
    alert_ref: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("alerts.id", name="leads_alert_ref_fk")
    )
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = _now()
    __table_args__ = (
        CheckConstraint(_in("status", LEAD_STATUSES), name="leads_status_ck"),
        CheckConstraint("priority BETWEEN 1 AND 10", name="leads_priority_ck"),
        CheckConstraint(
            "max_attempts IS NULL OR max_attempts BETWEEN 1 AND 20", name="leads_max_attempts_ck"
        ),
        # Serves the claim, per reseller; finished rows leave it, so it follows the live
        # backlog.
        Index(
            "leads_claim_idx",
            "reseller_id",
            text("priority DESC"),
            "next_attempt_at",
            "id",
            postgresql_where=text("status = 'BACKLOG'"),
        ),
        # Serves the resellers with due leads, and each one's oldest-first picks.
        Index(
            "leads_oldest_idx",
            "reseller_id",
            "next_attempt_at",
            "id",
            postgresql_where=text("status = 'BACKLOG'"),
        ),
        # Serves "when is the next lead due" for the scheduler's sleep.
        Index("leads_due_idx", "next_attempt_at", postgresql_where=text("status = 'BACKLOG'")),
        # Serves the count of leads holding or about to hold a channel, and lease expiry.
        Index(
            "leads_active_idx",
            "status",
            "lease_expires_at",
            postgresql_where=text("status IN ('QUEUED', 'DIALING', 'IN_CALL')"),
        ),
        Index(
            "leads_idempotency_uq",
            "reseller_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index("leads_reseller_id_idx", "reseller_id", text("id DESC")),
        Index("leads_phone_idx", "phone"),
        Index("leads_alert_idx", "alert_ref", postgresql_where=text("alert_ref IS NOT NULL")),
    )


class OutboundNumber(Base):
    __tablename__ = "outbound_numbers"
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    e164: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    provider: Mapped[str] = mapped_column(Text, nullable=False, server_default="simulator")
    max_channels: Mapped[int] = mapped_column(Integer, nullable=False)
    cps: Mapped[Decimal | None] = mapped_column(Numeric)
    reseller_id: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="true")
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = _now()
    __table_args__ = (
        CheckConstraint("max_channels >= 1", name="numbers_channels_ck"),
        CheckConstraint("cps IS NULL OR cps > 0", name="numbers_cps_ck"),
    )


class CallAttempt(Base):
    __tablename__ = "call_attempts"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    lead_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("leads.id", ondelete="CASCADE"), nullable=False
    )
    attempt_no: Mapped[int] = mapped_column(Integer, nullable=False)
    reseller_id: Mapped[str] = mapped_column(Text, nullable=False)
    phone: Mapped[str] = mapped_column(Text, nullable=False)
    number_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("outbound_numbers.id"), nullable=False
    )
    number: Mapped[str] = mapped_column(Text, nullable=False)
    provider: Mapped[str] = mapped_column(Text, nullable=False)
    provider_call_id: Mapped[str | None] = mapped_column(Text)
    # created → initiated → ringing → in-progress → ended; never moves backwards.
    call_state: Mapped[str] = mapped_column(Text, nullable=False, server_default="created")
    outcome: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    answered_by: Mapped[str | None] = mapped_column(Text)
    digits: Mapped[str | None] = mapped_column(Text)
    due_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[dt.datetime] = _now()
    placed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    answered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    duration_s: Mapped[Decimal | None] = mapped_column(Numeric)
    __table_args__ = (
        CheckConstraint(
            "outcome IS NULL OR " + _in("outcome", OUTCOMES), name="attempts_outcome_ck"
        ),
        Index("call_attempts_lead_uq", "lead_id", "attempt_no", unique=True),
        Index("call_attempts_provider_call_idx", "provider_call_id"),
        Index("call_attempts_open_idx", "number_id", postgresql_where=text("ended_at IS NULL")),
        Index("call_attempts_phone_idx", "reseller_id", "phone", "started_at"),
    )


class LeadEvent(Base):
    __tablename__ = "lead_events"
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    lead_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("leads.id", ondelete="CASCADE"), nullable=False
    )
    from_status: Mapped[str | None] = mapped_column(Text)
    to_status: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    attempt_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    at: Mapped[dt.datetime] = _now()
    __table_args__ = (Index("lead_events_lead_idx", "lead_id", "id"),)


# Storage parameters of the tables every call writes (migration 0005_hot_rows; leads'
# fillfactor since 0001). No update of a lead's status is HOT (status is in the claim
# indexes' predicates), nor an attempt's placing or ending: vacuum them after a fixed
# number of dead tuples, not a share of all rows, and with ten times the cost budget.
_HOT_VACUUM = {
    "autovacuum_vacuum_scale_factor": "0",
    "autovacuum_vacuum_threshold": "5000",
    "autovacuum_vacuum_cost_limit": "2000",
    "autovacuum_vacuum_cost_delay": "1",
}
STORAGE_PARAMETERS: dict[str, dict[str, str]] = {
    "leads": {**_HOT_VACUUM, "autovacuum_analyze_scale_factor": "0.02", "fillfactor": "80"},
    "call_attempts": _HOT_VACUUM,
    "lead_events": {
        "autovacuum_vacuum_insert_scale_factor": "0",
        "autovacuum_vacuum_insert_threshold": "100000",
        "autovacuum_vacuum_cost_limit": "2000",
        "autovacuum_vacuum_cost_delay": "1",
    },
}


class DoNotCall(Base):
    __tablename__ = "dnc"
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    phone: Mapped[str] = mapped_column(Text, nullable=False)
    # NULL: the global list; otherwise that reseller's own list.
    reseller_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _now()
    __table_args__ = (
        Index("dnc_phone_uq", "phone", text("coalesce(reseller_id, '')"), unique=True),
    )


class Control(Base):
    __tablename__ = "controls"
    scope: Mapped[str] = mapped_column(Text, primary_key=True)
    scope_id: Mapped[str] = mapped_column(Text, primary_key=True, server_default="")
    paused: Mapped[bool] = mapped_column(Boolean, nullable=False)
    updated_at: Mapped[dt.datetime] = _now()
    __table_args__ = (
        CheckConstraint("scope IN ('global', 'reseller', 'number')", name="controls_scope_ck"),
    )


class FairShare(Base):
    """Each reseller's weight and virtual time for the fair claim (stride scheduling);
    the row with reseller_id '' holds the system's virtual time."""

    __tablename__ = "fair_shares"
    reseller_id: Mapped[str] = mapped_column(Text, primary_key=True)
    weight: Mapped[float] = mapped_column(Float, nullable=False, server_default="1")
    vtime: Mapped[float] = mapped_column(Float, nullable=False, server_default="0")
    claimed: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    __table_args__ = (CheckConstraint("weight > 0", name="fair_shares_weight_ck"),)


class WebhookEvent(Base):
    """Provider events already applied: the primary key makes each apply once."""

    __tablename__ = "webhook_events"
    provider: Mapped[str] = mapped_column(Text, primary_key=True)
    event_id: Mapped[str] = mapped_column(Text, primary_key=True)
    received_at: Mapped[dt.datetime] = _now()


class AlertGroup(Base):
    __tablename__ = "alert_groups"
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    reseller_id: Mapped[str] = mapped_column(Text, nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    # [{"phone": E.164, "name": str}] in call order.
    members: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb")
    )
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = _now()
    __table_args__ = (UniqueConstraint("reseller_id", "name", name="alert_groups_name_uq"),)


class AlertGroupChange(Base):
    """Audit of alert group changes: who changed which group, how, to what."""

    __tablename__ = "alert_group_changes"
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    group_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    reseller_id: Mapped[str] = mapped_column(Text, nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    action: Mapped[str] = mapped_column(Text, nullable=False)
    members: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    actor: Mapped[str | None] = mapped_column(Text)
    at: Mapped[dt.datetime] = _now()
    __table_args__ = (
        CheckConstraint(
            "action IN ('created', 'updated', 'deleted')", name="alert_group_changes_action_ck"
        ),
        Index("alert_group_changes_group_idx", "group_id", "id"),
    )


class Alert(Base):
    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    reseller_id: Mapped[str] = mapped_column(Text, nullable=False)
    alert_id: Mapped[str] = mapped_column(Text, nullable=False)
    group_name: Mapped[str] = mapped_column(Text, nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)
    mode: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    rounds: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    round_no: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    member_index: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    members: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False)
    template: Mapped[str] = mapped_column(Text, nullable=False)
    merchant_id: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    acknowledged_by: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = _now()
    closed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (
        CheckConstraint("mode IN ('parallel', 'sequential')", name="alerts_mode_ck"),
        CheckConstraint(
            "status IN ('calling', 'acknowledged', 'exhausted', 'resolved')",
            name="alerts_status_ck",
        ),
        Index(
            "alerts_open_uq",
            "reseller_id",
            "alert_id",
            unique=True,
            postgresql_where=text("status <> 'resolved'"),
        ),
        Index("alerts_reseller_idx", "reseller_id", text("id DESC")),
    )


class AlertEvent(Base):
    """An alert's timeline: fired, member called, call ended, acknowledged, closed."""

    __tablename__ = "alert_events"
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    alert_ref: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False
    )
    at: Mapped[dt.datetime] = _now()
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    member_index: Mapped[int | None] = mapped_column(Integer)
    member_name: Mapped[str | None] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(Text)
    lead_id: Mapped[int | None] = mapped_column(BigInteger)
    attempt_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    outcome: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    __table_args__ = (Index("alert_events_alert_idx", "alert_ref", "id"),)


# --- shadow ZSET schedule and parity (dispatcher/shadow.py, dispatcher/parity.py) ---------


class ShadowFlag(Base):
    """Shadow mode on or off: scope '*' for every reseller, else one reseller's override."""

    __tablename__ = "shadow_flags"
    scope: Mapped[str] = mapped_column(Text, primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False)
    updated_at: Mapped[dt.datetime] = _now()


class ParityObservation(Base):
    """One dispatch decision of either schedule: a real claim ('pg') or a shadow consumer's
    pop ('zset'). Append-only and unconstrained by foreign keys, so writing it never waits
    on the real path; BRIN on time keeps a day's report cheap and pruning by time simple."""

    __tablename__ = "parity_observations"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    lead_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    attempt_no: Mapped[int] = mapped_column(Integer, nullable=False)
    reseller_id: Mapped[str] = mapped_column(Text, nullable=False)
    due_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    observed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    __table_args__ = (
        CheckConstraint("path IN ('pg', 'zset')", name="parity_observations_path_ck"),
        Index("parity_observations_observed_brin", "observed_at", postgresql_using="brin"),
        Index("parity_observations_lead_idx", "lead_id", "attempt_no"),
    )


class ShadowEvent(Base):
    """What happened to the shadow itself (faults, failovers, repairs): the report's
    explanation of each divergence and of how long the ZSET design took to heal."""

    __tablename__ = "shadow_events"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    lead_id: Mapped[int | None] = mapped_column(BigInteger)
    reseller_id: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    __table_args__ = (Index("shadow_events_at_idx", "at"),)
