"""Operations: the `ops` schema of views and functions, and a read-only role for them.

Every question an operator asks during an incident (how deep is the queue, what is due
and how late, what is stuck, how busy is each number, what failed and why, what happened
to lead N) has one view or function here, documented with examples in ops/QUERIES.md.

The views are plain views owned by the migrating user: PostgreSQL checks the view
owner's rights on the base tables, so `switchboard_ops_reader` needs (and has) nothing
on `public`. The two functions run as their owner (SECURITY DEFINER, pinned
search_path) for the same reason; EXECUTE on them is revoked from PUBLIC.

The role is cluster-wide while the grants are per database: it is created only when
missing (several databases of one server run this migration, possibly at once), and the
downgrade revokes this database's grants but leaves the role, which other databases and
role memberships (`GRANT switchboard_ops_reader TO alice`) may still use. Drop it by hand
when no database uses it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 09:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READER = "switchboard_ops_reader"

# Lifecycle order for sorting (db.models.LEAD_STATUSES; a migration keeps its own copy).
_STATUS_ORDER = (
    "ARRAY['BACKLOG', 'QUEUED', 'DIALING', 'IN_CALL', 'COMPLETED', 'FAILED', 'EXPIRED',"
    " 'SKIPPED', 'CANCELLED']"
)

_VIEWS_AND_FUNCTIONS = [
    "CREATE SCHEMA ops",
    "COMMENT ON SCHEMA ops IS 'Operators'' read-only views and functions: see ops/QUERIES.md'",
    # --- how many leads in each status, per reseller ------------------------------------
    f"""
    CREATE VIEW ops.queue_depth AS
    SELECT l.reseller_id, l.status, count(*) AS leads
    FROM public.leads l
    GROUP BY l.reseller_id, l.status
    ORDER BY l.reseller_id, array_position({_STATUS_ORDER}, l.status)
    """,
    "COMMENT ON VIEW ops.queue_depth IS 'Leads per reseller and status.'",
    # --- what is due now, and how late --------------------------------------------------
    # Age counts from next_attempt_at, the moment the lead became due: it is the dispatch
    # lag. A lead deferred (no free channel, paused) gets a new next_attempt_at.
    """
    CREATE VIEW ops.due_backlog AS
    SELECT l.reseller_id,
           count(*) AS due_leads,
           min(l.next_attempt_at) AS oldest_due_at,
           round(extract(epoch FROM now() - min(l.next_attempt_at)), 1) AS oldest_due_age_s,
           EXISTS (
               SELECT 1 FROM public.controls c
               WHERE c.paused
                 AND (c.scope = 'global' OR (c.scope = 'reseller' AND c.scope_id = l.reseller_id))
           ) AS paused
    FROM public.leads l
    WHERE l.status = 'BACKLOG' AND l.next_attempt_at <= now()
    GROUP BY l.reseller_id
    ORDER BY oldest_due_at, l.reseller_id
    """,
    "COMMENT ON VIEW ops.due_backlog IS 'Per reseller: BACKLOG leads due now, and how long the oldest has been due (s).'",
    """
    CREATE VIEW ops.due_backlog_total AS
    SELECT count(DISTINCT l.reseller_id) AS resellers,
           count(*) AS due_leads,
           min(l.next_attempt_at) AS oldest_due_at,
           round(extract(epoch FROM now() - min(l.next_attempt_at)), 1) AS oldest_due_age_s
    FROM public.leads l
    WHERE l.status = 'BACKLOG' AND l.next_attempt_at <= now()
    """,
    "COMMENT ON VIEW ops.due_backlog_total IS 'One row: all BACKLOG leads due now, and how long the oldest has been due (s).'",
    # --- leads that should have moved on --------------------------------------------------
    # `since` is when the lead entered its status: its newest lead_events row (every
    # transition writes one), or updated_at for a lead without events.
    # Defaults: a QUEUED lead past its lease (the reconciler returns those to BACKLOG every
    # couple of seconds), DIALING over 60 s (a worker died between the attempt row and the
    # provider's answer), IN_CALL over an hour (SWITCHBOARD_MAX_CALL_S: a lost final callback).
    """
    CREATE FUNCTION ops.stuck_leads(
        queued_s double precision DEFAULT 0,
        dialing_s double precision DEFAULT 60,
        in_call_s double precision DEFAULT 3600
    )
    RETURNS TABLE (
        lead_id bigint,
        reseller_id text,
        status text,
        problem text,
        since timestamptz,
        in_status_s numeric,
        lease_expires_at timestamptz,
        attempt_id uuid,
        number text,
        provider_call_id text
    )
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT l.id,
               l.reseller_id,
               l.status,
               CASE l.status
                   WHEN 'QUEUED' THEN 'lease_expired'
                   WHEN 'DIALING' THEN 'dialing_too_long'
                   ELSE 'in_call_too_long'
               END,
               s.since,
               round(extract(epoch FROM now() - s.since), 1),
               l.lease_expires_at,
               l.current_attempt_id,
               a.number,
               a.provider_call_id
        FROM public.leads l
        CROSS JOIN LATERAL (
            SELECT coalesce(
                (SELECT e.at FROM public.lead_events e
                 WHERE e.lead_id = l.id ORDER BY e.id DESC LIMIT 1),
                l.updated_at
            ) AS since
        ) s
        LEFT JOIN public.call_attempts a ON a.id = l.current_attempt_id
        WHERE l.status IN ('QUEUED', 'DIALING', 'IN_CALL')
          AND CASE l.status
                  WHEN 'QUEUED' THEN l.lease_expires_at IS NULL
                      OR l.lease_expires_at < now() - make_interval(secs => stuck_leads.queued_s)
                  WHEN 'DIALING' THEN s.since < now() - make_interval(secs => stuck_leads.dialing_s)
                  ELSE s.since < now() - make_interval(secs => stuck_leads.in_call_s)
              END
        ORDER BY s.since, l.id
    $$
    """,
    "COMMENT ON FUNCTION ops.stuck_leads(double precision, double precision, double precision) IS"
    " 'Active leads past a threshold: QUEUED queued_s past the lease, DIALING over dialing_s, IN_CALL over in_call_s.'",
    """
    CREATE VIEW ops.stuck_leads AS
    SELECT * FROM ops.stuck_leads() s ORDER BY s.since, s.lead_id
    """,
    "COMMENT ON VIEW ops.stuck_leads IS 'ops.stuck_leads() with its default thresholds (0 s past lease, 60 s, 3600 s).'",
    # --- per number: channels in use, call rate ----------------------------------------
    # In flight = attempts not ended, what the channel semaphores are rebuilt from.
    # Started in the last 60 s scans call_attempts (no index on started_at).
    """
    CREATE VIEW ops.channel_use AS
    WITH open AS (
        SELECT a.number_id, count(*) AS in_flight
        FROM public.call_attempts a
        WHERE a.ended_at IS NULL
        GROUP BY a.number_id
    ), recent AS (
        SELECT a.number_id, count(*) AS started
        FROM public.call_attempts a
        WHERE a.started_at > now() - interval '60 seconds'
        GROUP BY a.number_id
    )
    SELECT n.id AS number_id,
           n.e164 AS number,
           n.provider,
           n.reseller_id,
           n.enabled,
           EXISTS (
               SELECT 1 FROM public.controls c
               WHERE c.paused AND c.scope = 'number' AND c.scope_id = n.id::text
           ) AS paused,
           n.max_channels,
           coalesce(o.in_flight, 0) AS in_flight,
           round(100.0 * coalesce(o.in_flight, 0) / n.max_channels, 1) AS utilisation_pct,
           coalesce(r.started, 0) AS started_last_60s,
           round(coalesce(r.started, 0) / 60.0, 2) AS calls_per_s,
           n.cps AS cps_limit
    FROM public.outbound_numbers n
    LEFT JOIN open o ON o.number_id = n.id
    LEFT JOIN recent r ON r.number_id = n.id
    ORDER BY n.id
    """,
    "COMMENT ON VIEW ops.channel_use IS 'Per outbound number: open attempts against max_channels, and calls started in the last 60 s.'",
    # --- outcomes per hour ------------------------------------------------------------------
    # Hours are UTC and counted by ended_at, when the outcome became known.
    """
    CREATE VIEW ops.outcomes_hourly AS
    SELECT date_trunc('hour', a.ended_at, 'UTC') AS hour,
           l.template,
           a.reseller_id,
           a.outcome,
           count(*) AS attempts
    FROM public.call_attempts a
    JOIN public.leads l ON l.id = a.lead_id
    WHERE a.ended_at IS NOT NULL
    GROUP BY 1, 2, 3, 4
    ORDER BY hour DESC, l.template, a.reseller_id, a.outcome
    """,
    "COMMENT ON VIEW ops.outcomes_hourly IS 'Ended attempts per UTC hour (of ended_at), template, reseller and outcome.'",
    # --- why leads failed (the first step of a recovery) ------------------------------
    # reason: of the lead's final transition; error: of its last attempt.
    """
    CREATE VIEW ops.failures AS
    SELECT l.status,
           e.reason,
           l.outcome,
           a.error,
           count(*) AS leads,
           min(coalesce(e.at, l.updated_at)) AS first_seen,
           max(coalesce(e.at, l.updated_at)) AS last_seen,
           (array_agg(l.id ORDER BY coalesce(e.at, l.updated_at) DESC, l.id DESC))[1:5]
               AS sample_lead_ids
    FROM public.leads l
    LEFT JOIN LATERAL (
        SELECT le.at, le.reason FROM public.lead_events le
        WHERE le.lead_id = l.id ORDER BY le.id DESC LIMIT 1
    ) e ON true
    LEFT JOIN LATERAL (
        SELECT ca.error FROM public.call_attempts ca
        WHERE ca.lead_id = l.id ORDER BY ca.attempt_no DESC LIMIT 1
    ) a ON true
    WHERE l.status IN ('FAILED', 'EXPIRED')
    GROUP BY l.status, e.reason, l.outcome, a.error
    ORDER BY leads DESC, last_seen DESC, l.status, e.reason, l.outcome, a.error
    """,
    "COMMENT ON VIEW ops.failures IS 'FAILED and EXPIRED leads grouped by status, final reason, outcome and last attempt error.'",
    # --- how many calls finished leads took --------------------------------------------
    """
    CREATE VIEW ops.attempts_per_lead AS
    SELECT l.attempt_count AS attempts,
           count(*) AS leads,
           count(*) FILTER (WHERE l.status = 'COMPLETED') AS completed,
           count(*) FILTER (WHERE l.status = 'FAILED') AS failed,
           count(*) FILTER (WHERE l.status = 'EXPIRED') AS expired,
           count(*) FILTER (WHERE l.status = 'SKIPPED') AS skipped,
           count(*) FILTER (WHERE l.status = 'CANCELLED') AS cancelled,
           round(100.0 * count(*) / sum(count(*)) OVER (), 1) AS pct
    FROM public.leads l
    WHERE l.status IN ('COMPLETED', 'FAILED', 'EXPIRED', 'SKIPPED', 'CANCELLED')
    GROUP BY l.attempt_count
    ORDER BY l.attempt_count
    """,
    "COMMENT ON VIEW ops.attempts_per_lead IS 'Finished leads by number of attempts, split by final status.'",
    # --- one lead's history ----------------------------------------------------------------
    # Status changes and call milestones in time order. At one instant, a call ends before
    # the status change it caused and starts after the status change that started it
    # (both happen in one transaction): ord 0 call_ended, 1 status, 2 call_started/answered.
    # For call_ended rows, `reason` carries the attempt's error.
    """
    CREATE FUNCTION ops.lead_timeline(lead_id bigint)
    RETURNS TABLE (
        at timestamptz,
        kind text,
        from_status text,
        to_status text,
        reason text,
        attempt_id uuid,
        outcome text,
        number text
    )
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT t.at, t.kind, t.from_status, t.to_status, t.reason, t.attempt_id, t.outcome,
               t.number
        FROM (
            SELECT e.at, 'status' AS kind, e.from_status, e.to_status, e.reason,
                   e.attempt_id, NULL::text AS outcome, a.number, 1 AS ord, e.id AS seq
            FROM public.lead_events e
            LEFT JOIN public.call_attempts a ON a.id = e.attempt_id
            WHERE e.lead_id = lead_timeline.lead_id
            UNION ALL
            SELECT a.started_at, 'call_started', NULL, NULL, NULL, a.id, NULL, a.number, 2,
                   a.attempt_no
            FROM public.call_attempts a
            WHERE a.lead_id = lead_timeline.lead_id
            UNION ALL
            SELECT a.answered_at, 'call_answered', NULL, NULL, NULL, a.id, NULL, a.number, 2,
                   a.attempt_no
            FROM public.call_attempts a
            WHERE a.lead_id = lead_timeline.lead_id AND a.answered_at IS NOT NULL
            UNION ALL
            SELECT a.ended_at, 'call_ended', NULL, NULL, a.error, a.id, a.outcome, a.number, 0,
                   a.attempt_no
            FROM public.call_attempts a
            WHERE a.lead_id = lead_timeline.lead_id AND a.ended_at IS NOT NULL
        ) t
        ORDER BY t.at, t.ord, t.seq
    $$
    """,
    "COMMENT ON FUNCTION ops.lead_timeline(bigint) IS"
    " 'One lead: status changes (lead_events) and call start/answer/end (call_attempts) in time order.'",
    # Functions are executable by PUBLIC by default; these run as their owner.
    "REVOKE ALL ON FUNCTION ops.stuck_leads(double precision, double precision, double precision) FROM PUBLIC",
    "REVOKE ALL ON FUNCTION ops.lead_timeline(bigint) FROM PUBLIC",
]

# Create the role when missing; a concurrent migration of another database may create it
# first (duplicate_object, or unique_violation on pg_authid when both insert at once). A
# migrating user without CREATEROLE gets a warning instead of a failed deploy: the views
# work without the role, and a superuser can create it and rerun the grants.
# One `%` in RAISE: SQLAlchemy's text() doubles it and the driver halves it again.
_GRANTS = f"""
DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '{READER}') THEN
        BEGIN
            CREATE ROLE {READER} NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;
            WHEN insufficient_privilege THEN
                RAISE WARNING 'ops: cannot create role {READER} (%); create it as a'
                    ' superuser and run the GRANTs in ops/QUERIES.md', SQLERRM;
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '{READER}') THEN
        GRANT USAGE ON SCHEMA ops TO {READER};
        GRANT SELECT ON ALL TABLES IN SCHEMA ops TO {READER};
        GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA ops TO {READER};
    END IF;
END
$do$
"""

_REVOKES = f"""
DO $do$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '{READER}') THEN
        REVOKE ALL ON ALL TABLES IN SCHEMA ops FROM {READER};
        REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ops FROM {READER};
        REVOKE ALL ON SCHEMA ops FROM {READER};
    END IF;
END
$do$
"""


def upgrade() -> None:
    for statement in _VIEWS_AND_FUNCTIONS:
        op.execute(statement)
    op.execute(_GRANTS)


def downgrade() -> None:
    op.execute(_REVOKES)
    op.execute("DROP SCHEMA ops CASCADE")
