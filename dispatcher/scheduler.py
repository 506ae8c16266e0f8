"""The scheduler: claims due leads, as many as there are free channels, and hands each to
the dispatch actor. Any number may run; SKIP LOCKED needs no leader.

It sleeps until the earliest of a NOTIFY (a lead became due, a channel was freed), the
next lead's `next_attempt_at`, or a short safety timeout: no fixed polling tick. The
reconcilers and the health monitor run on a thread beside the claims.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog
from psycopg import Connection

from db.pool import connect
from dispatcher import controls, fairness, heartbeat, lifecycle, metrics, monitor, reconcile
from dispatcher.controls import Paused
from dispatcher.lifecycle import Claimed
from dispatcher.runtime import Runtime
from dispatcher.settings import Settings

log = structlog.get_logger(__name__)

Send = Callable[[Sequence[Claimed]], None]
T = TypeVar("T")
CLAIM_LOCK = 727_000  # advisory lock: one scheduler allocates claims at a time
NOTIFY_COALESCE_S = 0.005  # bounds the latency it adds; see `run`


@dataclass(frozen=True)
class Tick:
    claimed: int
    free: int
    sleep_s: float  # how long nothing is due, capped by the safety timeout


@dataclass(frozen=True)
class Capacity:
    free: int  # calls that may start now
    cps_wake_s: float | None  # when a number held back only by its cps limit frees a slot


def capacity(rt: Runtime, conn: Connection, paused_numbers: Collection[int] = ()) -> Capacity:
    """Per enabled, unpaused number its free channels, capped by its calls-per-second
    budget, summed, minus leads already claimed and about to take one."""
    rows = conn.execute(
        """
        SELECT n.id, n.max_channels, n.cps::float8 AS cps,
               (SELECT count(*) FROM call_attempts a
                WHERE a.number_id = n.id AND a.ended_at IS NULL) AS open
        FROM outbound_numbers n
        WHERE n.enabled AND NOT (n.id = ANY(%s))
        """,
        (list(paused_numbers),),
    ).fetchall()
    queued = conn.execute("SELECT count(*) AS n FROM leads WHERE status = 'QUEUED'").fetchone()
    total, wake = 0, None
    for r in rows:
        free = max(r["max_channels"] - r["open"], 0)
        budget, wait_s = rt.channels.cps_budget(r["id"], r["cps"])
        if budget is None:
            total += free
            continue
        total += min(free, budget)
        if free:  # wake for its next calls-per-second slot
            wake = wait_s if wake is None else min(wake, wait_s)
    return Capacity(max(total - (queued["n"] if queued else 0), 0), wake)


def seconds_until_next_due(conn: Connection, paused: Collection[str] = ()) -> float | None:
    """Until the next lead a claim may take is due. Paused resellers' leads do not count:
    their overdue leads would keep the loop from ever sleeping."""
    if not paused:
        row = conn.execute(
            "SELECT extract(epoch FROM min(next_attempt_at) - now()) AS s FROM leads"
            " WHERE status = 'BACKLOG'"
        ).fetchone()
    else:  # the resellers in the backlog (a loose index scan), then each one's earliest
        row = conn.execute(
            fairness.BACKLOG_RESELLERS
            + """
            SELECT extract(epoch FROM min(n.at) - now()) AS s
            FROM r, LATERAL (SELECT next_attempt_at AS at FROM leads
                             WHERE status = 'BACKLOG' AND reseller_id = r.reseller_id
                             ORDER BY next_attempt_at LIMIT 1) n
            WHERE r.reseller_id IS NOT NULL AND NOT (r.reseller_id = ANY(%s))
            """,
            (list(paused),),
        ).fetchone()
    return None if row is None or row["s"] is None else max(float(row["s"]), 0.0)


def claim_fairly(conn: Connection, slots: int, lease_s: float, paused: Paused) -> list[Claimed]:
    """Claim up to `slots` due leads, shared between resellers by `fairness`. One
    scheduler allocates at a time (the advisory lock); the claims themselves skip rows
    other transactions hold."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (CLAIM_LOCK,))
    active = fairness.active_resellers(conn, exclude=paused.resellers)
    shares = fairness.load(conn, active)
    claimed: list[Claimed] = []
    while slots > 0 and shares:
        for reseller, quota in fairness.allocate(slots, shares).items():
            share = shares[reseller]
            oldest = fairness.oldest_quota(share.claimed, quota)
            got = lifecycle.claim(conn, reseller, oldest, lease_s, oldest_first=True)
            got += lifecycle.claim(conn, reseller, quota - len(got), lease_s)
            share.charge(len(got))
            claimed += got
            slots -= len(got)
            if len(got) < quota:  # nothing more due for it: others share the rest
                fairness.save(conn, {reseller: shares.pop(reseller)})
    fairness.save(conn, shares)
    return claimed


def tick(rt: Runtime, send: Send) -> Tick:
    """One claim: commit the claim, then send the messages (a crash in between leaves
    leases that the reconciler expires). `sleep_s` is 0 when the claim was full."""
    settings = rt.settings
    with rt.pool.connection() as conn:
        with conn.transaction():
            paused = controls.paused(conn)
            cap = Capacity(0, None) if paused.global_ else capacity(rt, conn, paused.numbers)
            free = cap.free
            limit = min(free, settings.claim_batch)
            claimed = claim_fairly(conn, limit, settings.lease_s, paused) if limit else []
        if claimed:
            send(claimed)
            metrics.CLAIMS.inc(len(claimed))
        if claimed and len(claimed) == limit:
            return Tick(len(claimed), free, 0.0)
        # Nothing more is due now, or no channel is free (then a NOTIFY wakes us).
        wait = seconds_until_next_due(conn, paused.resellers) if free > len(claimed) else None
    waits = (wait, cap.cps_wake_s, settings.scheduler_safety_s)
    return Tick(len(claimed), free, min(w for w in waits if w is not None))


def run(rt: Runtime, send: Send, stop: threading.Event) -> None:
    """Claim until `stop` is set; the housekeeping runs beside it on its own thread."""
    settings = rt.settings
    assert settings.database_url
    listener = connect(settings.database_url, autocommit=True)
    listener.execute(f"LISTEN {lifecycle.NOTIFY_CHANNEL}")
    beats = heartbeat.Heartbeats.open(settings)
    chores = threading.Thread(
        target=housekeeping, args=(rt, stop), name="housekeeping", daemon=True
    )
    chores.start()
    log.info("scheduler_started")
    try:
        while not stop.is_set():
            beats.beat_safely(heartbeat.SCHEDULER)  # /health: this loop is turning
            metrics.scheduler_loop()
            result = _guarded(tick, rt, send)
            sleep_s = settings.scheduler_safety_s if result is None else result.sleep_s
            if sleep_s > 0:
                for _ in listener.notifies(timeout=sleep_s, stop_after=1):
                    # Call ends and new leads NOTIFY in bursts: let a few gather and
                    # answer them with one claim, not one claim each.
                    time.sleep(NOTIFY_COALESCE_S)
                for _ in listener.notifies(timeout=0):
                    pass  # drain what gathered
    finally:
        stop.set()
        chores.join(timeout=rt.settings.provider_timeout_s + 5)  # a lookup in flight
        listener.close()
        beats.forget(heartbeat.SCHEDULER)
        beats.close()
        log.info("scheduler_stopped")


def housekeeping(rt: Runtime, stop: threading.Event) -> None:
    """Reconcilers, backlog gauges and the health monitor, each on its interval, on a
    thread of their own: a reconciler asking a slow provider about silent calls must
    never hold up claims."""
    settings = rt.settings
    next_reconcile = next_sample = 0.0
    # The first health check waits one interval: workers started with us need to beat.
    next_monitor = time.monotonic() + settings.monitor_interval_s
    while not stop.is_set():
        if settings.scheduler_metrics_port and time.monotonic() >= next_sample:
            _guarded(metrics.sample_backlog, rt)
            next_sample = time.monotonic() + settings.metrics_sample_s
        if time.monotonic() >= next_reconcile:
            _guarded(reconcile.run_all, rt)
            next_reconcile = time.monotonic() + settings.reconcile_interval_s
        if settings.monitor_interval_s and time.monotonic() >= next_monitor:
            _guarded(monitor.check_health, rt)
            next_monitor = time.monotonic() + settings.monitor_interval_s
        due = [next_reconcile]
        if settings.scheduler_metrics_port:
            due.append(next_sample)
        if settings.monitor_interval_s:
            due.append(next_monitor)
        stop.wait(max(min(due) - time.monotonic(), 0.0))


def _guarded(fn: Callable[..., T], *args: object) -> T | None:
    """Keep the loop alive through a database or Redis outage; log and retry later."""
    try:
        return fn(*args)
    except Exception:
        log.exception("scheduler_step_failed", step=getattr(fn, "__name__", str(fn)))
        time.sleep(0.5)
        return None


def batches(claimed: Sequence[Claimed], slots: int, most: int) -> list[list[Claimed]]:
    """Split a claim into messages: spread over the workers' `slots` (threads in all
    processes) so that none waits while another holds a long batch, and at most `most`
    leads per message (a batch's calls are placed one after another)."""
    if not claimed:
        return []
    size = max(1, min(most, math.ceil(len(claimed) / max(slots, 1))))
    return [list(claimed[i : i + size]) for i in range(0, len(claimed), size)]


def sender(settings: Settings) -> Send:
    """Hand claims to the dispatch actor in batches."""
    from dispatcher.actors import dispatch_leads

    slots = settings.worker_processes * settings.worker_threads

    def send(claimed: Sequence[Claimed]) -> None:
        for batch in batches(claimed, slots, settings.dispatch_batch):
            dispatch_leads.send([[c.lead_id, c.fence] for c in batch])

    return send
