"""Switchboard's own Prometheus metrics (ops/METRICS.md lists them with their meaning).

Each process counts what happens in it: the scheduler claims, repairs and samples the
backlog from PostgreSQL; the workers place calls; the API applies webhooks. Calls end
in all three, so dashboards sum the counters over every target.

Labels stay bounded on purpose: outcomes, results, kinds, providers and outbound numbers
(few, and managed by operators). Never a lead id or a callee's phone.

The backlog gauges are the scheduler's alone and are created on its first sample, not
at import. Created at import, they would read 0 in every other process (and, in a
worker's multiprocess mode, once per pid), and `max()` or `absent()` over them would lie.

`switchboard worker` sets PROMETHEUS_MULTIPROC_DIR before its worker processes start, so
what they count here lands in files that one exposition port serves for all of them,
together with Dramatiq's own metrics (see `dispatcher.worker`).
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client import multiprocess as prom_multiprocess

from dispatcher.settings import Settings

if TYPE_CHECKING:  # kept light: the worker's exposition fork imports only this module
    from psycopg import Connection

    from dispatcher.lifecycle import CallEnded
    from dispatcher.runtime import Runtime

log = structlog.get_logger(__name__)

# Leads that are due wait this long before a call starts: sub-second when healthy, minutes
# when channels are saturated; the 5-minute alert sits between buckets.
PICKUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LIVE_STATUSES = ("BACKLOG", "QUEUED", "DIALING", "IN_CALL")  # the gauge switchboard_leads

CLAIMS = Counter(
    "switchboard_claims", "Leads the scheduler claimed (BACKLOG to QUEUED), sent to the workers."
)
DISPATCHES = Counter(
    "switchboard_dispatches",
    "Dispatch actor runs by result: placed, provider_error, unknown, cancelled, stale,"
    " expired, do_not_call, no_calling_window, deferred:<reason>.",
    ["result"],
)
PICKUP_LATENCY = Histogram(
    "switchboard_pickup_latency_seconds",
    "From the moment a lead was due to the start of its call attempt"
    " (call_attempts.started_at - due_at), observed once per attempt.",
    buckets=PICKUP_BUCKETS,
)
CALL_OUTCOMES = Counter(
    "switchboard_call_outcomes",
    "Call attempts ended, by outcome (webhooks in the API, provider errors in workers,"
    " silent calls in the scheduler's reconciler).",
    ["outcome"],
)
WEBHOOK_EVENTS = Counter(
    "switchboard_webhook_events",
    "Provider status callbacks by provider and result: applied, duplicate, bad_signature,"
    " malformed.",
    ["provider", "result"],
)
RECONCILER_REPAIRS = Counter(
    "switchboard_reconciler_repairs",
    "Repairs made by the reconcilers, by kind: lease_expired, call_ended, slot_added,"
    " slot_removed.",
    ["kind"],
)

# The shadow ZSET schedule (dispatcher/shadow.py): its Redis errors never reach the real
# path, so this counter is where they show.
SHADOW_REDIS_ERRORS = Counter(
    "switchboard_shadow_redis_errors",
    "Redis errors the shadow ZSET schedule absorbed, by where (zadd, zrem, promote, consume,"
    " reconcile, reap, sentinel, leader) and error class (connection, timeout, loading,"
    " readonly, response, other).",
    ["where", "error"],
)
SHADOW_OBSERVATIONS = Counter(
    "switchboard_shadow_observations",
    "Parity observations recorded, by path: pg (a real claim of a shadowed lead) or zset"
    " (a shadow consumer's pop).",
    ["path"],
)

ALERT_CALLS_CAPPED = Counter(
    "switchboard_alert_calls_capped",
    "Alert members not called because a flood cap was reached, by reason: reseller_window"
    " (alert_calls_per_window) or alert_window (alert_calls_per_alert).",
    ["reason"],
)


@dataclass(frozen=True)
class SchedulerGauges:
    heartbeat: Gauge
    due_leads: Gauge
    oldest_due_age: Gauge
    leads: Gauge
    in_flight: Gauge
    channels: Gauge


@functools.cache
def scheduler_gauges() -> SchedulerGauges:
    """The scheduler's gauges, registered on first use (see the module docstring)."""
    return SchedulerGauges(
        heartbeat=Gauge(
            "switchboard_scheduler_heartbeat_timestamp_seconds",
            "Unix time of the scheduler loop's last pass.",
        ),
        due_leads=Gauge("switchboard_due_leads", "BACKLOG leads whose next_attempt_at has passed."),
        oldest_due_age=Gauge(
            "switchboard_oldest_due_age_seconds",
            "How long the oldest due BACKLOG lead has been due (0 when none is).",
        ),
        leads=Gauge(
            "switchboard_leads",
            "Leads in each live status: BACKLOG (due or not), QUEUED, DIALING, IN_CALL.",
            ["status"],
        ),
        in_flight=Gauge(
            "switchboard_calls_in_flight",
            "Attempts not yet ended per outbound number (the channels in use).",
            ["number"],
        ),
        channels=Gauge(
            "switchboard_number_channels",
            "max_channels of each enabled outbound number.",
            ["number"],
        ),
    )


def scheduler_loop() -> None:
    """The scheduler loop passed once: Prometheus alerts when this stops moving."""
    scheduler_gauges().heartbeat.set_to_current_time()


def observe_pickup(due_at: dt.datetime, started_at: dt.datetime) -> None:
    PICKUP_LATENCY.observe(max((started_at - due_at).total_seconds(), 0.0))


def call_ended(ended: CallEnded) -> None:
    CALL_OUTCOMES.labels(outcome=ended.outcome).inc()


def repairs(leases_expired: int, calls_ended: int, slots_added: int, slots_removed: int) -> None:
    for kind, n in (
        ("lease_expired", leases_expired),
        ("call_ended", calls_ended),
        ("slot_added", slots_added),
        ("slot_removed", slots_removed),
    ):
        if n:
            RECONCILER_REPAIRS.labels(kind=kind).inc(n)


def sample_backlog(rt: Runtime) -> None:
    """Set the scheduler's gauges from PostgreSQL. Every query reads a partial index
    (leads_due_idx, leads_active_idx, call_attempts_open_idx), so the cost follows the
    live backlog, not history; the scheduler runs this every `metrics_sample_s`."""
    with rt.pool.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL statement_timeout = '5s'")
        _sample(conn, scheduler_gauges())


def _sample(conn: Connection, g: SchedulerGauges) -> None:
    due = conn.execute(
        "SELECT count(*) AS n, extract(epoch FROM now() - min(next_attempt_at)) AS oldest_s"
        " FROM leads WHERE status = 'BACKLOG' AND next_attempt_at <= now()"
    ).fetchone()
    assert due is not None
    g.due_leads.set(due["n"])
    g.oldest_due_age.set(max(float(due["oldest_s"] or 0.0), 0.0))
    live = dict.fromkeys(LIVE_STATUSES, 0)
    # Two statements, each matching a partial index's predicate exactly.
    backlog = conn.execute("SELECT count(*) AS n FROM leads WHERE status = 'BACKLOG'").fetchone()
    live["BACKLOG"] = backlog["n"] if backlog else 0
    for row in conn.execute(
        "SELECT status, count(*) AS n FROM leads"
        " WHERE status IN ('QUEUED', 'DIALING', 'IN_CALL') GROUP BY status"
    ).fetchall():
        live[row["status"]] = row["n"]
    for status, n in live.items():
        g.leads.labels(status=status).set(n)
    numbers = conn.execute(
        """
        SELECT n.e164, n.enabled, n.max_channels,
               (SELECT count(*) FROM call_attempts a
                WHERE a.number_id = n.id AND a.ended_at IS NULL) AS in_flight
        FROM outbound_numbers n
        """
    ).fetchall()
    _set_per_number(g.in_flight, {r["e164"]: r["in_flight"] for r in numbers})
    _set_per_number(g.channels, {r["e164"]: r["max_channels"] for r in numbers if r["enabled"]})


def _set_per_number(gauge: Gauge, values: dict[str, int]) -> None:
    """Set each number's value and drop numbers that are gone, so a deleted or disabled
    number does not keep its last value forever."""
    for labels in {s.labels["number"] for m in gauge.collect() for s in m.samples} - set(values):
        gauge.remove(labels)
    for number, value in values.items():
        gauge.labels(number=number).set(value)


def serve(port: int, host: str) -> bool:
    """Serve this process's metrics on `host:port` (0: off). A port in use is logged,
    not fatal: a scheduler without metrics still dispatches."""
    if not port:
        return False
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.error("metrics_port_unavailable", port=port, host=host, error=str(exc))
        return False
    log.info("metrics_serving", port=port, host=host)
    return True


def serve_worker_metrics() -> int:
    """Dramatiq fork process of `switchboard worker`: serve the metrics every worker
    process writes to PROMETHEUS_MULTIPROC_DIR (ours and Dramatiq's) until terminated."""
    settings = Settings.load()
    registry = CollectorRegistry()
    prom_multiprocess.MultiProcessCollector(registry)
    try:
        _, thread = start_http_server(
            settings.worker_metrics_port, addr=settings.metrics_host, registry=registry
        )
    except OSError as exc:
        log.error("metrics_port_unavailable", port=settings.worker_metrics_port, error=str(exc))
        return 0
    log.info("metrics_serving", port=settings.worker_metrics_port, host=settings.metrics_host)
    while thread.is_alive():
        thread.join(timeout=1)
    return 0
