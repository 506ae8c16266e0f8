"""`bench crash`: schedulers and workers killed with SIGKILL at random under load.

Two schedulers and two worker services dispatch `leads` leads (due at a steady rate);
at random moments one of them is killed with SIGKILL (its whole process group) and
restarted after a short delay. For each kill the leads in flight at that moment (QUEUED
with a lease, or DIALING) are recorded together with the kill time (PostgreSQL's clock);
afterwards, each one's time from the kill to its next placed call, or to the end of the
attempt it held (an attempt left unplaced by a dead worker is ended by the reconciler),
is read from call_attempts. The in-flight set includes leads of the processes that
survived: they resolve within milliseconds, the stranded ones show in the tail (p99,
max) and in `redispatch_over_1s`.

Duplicate dials: in simulator mode the simulator's own score (GET /sim/stats), and in
both modes the durable record: two attempts of one lead whose lifetimes overlap.
"""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from dispatcher.bench import stats
from dispatcher.bench.env import BenchEnv, wait_until
from dispatcher.bench.world import SIMULATOR, Shape, World, world
from dispatcher.lifecycle import FINAL

WORKER_SERVICES = ("worker", "worker1")  # world() starts "worker"; the second is ours


@dataclass(frozen=True)
class InFlight:
    lead_id: int
    status: str
    attempt_id: uuid.UUID | None


@dataclass(frozen=True)
class Kill:
    name: str
    at: dt.datetime  # clock_timestamp() read just before listing `inflight` and killing
    inflight: tuple[InFlight, ...]


@dataclass(frozen=True)
class Attempt:
    id: uuid.UUID
    lead_id: int
    placed_at: dt.datetime | None
    ended_at: dt.datetime | None


@dataclass
class CrashResult:
    kills: list[Kill] = field(default_factory=list)
    lo: int = 0
    hi: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


# --- the arithmetic (unit-tested) -------------------------------------------------------


def resolution_s(kill: Kill, lead: InFlight, attempts: Sequence[Attempt]) -> float | None:
    """Seconds from the kill to the lead's next placed call, or to the end of the attempt
    it held at the kill (the reconciler ends one a dead worker left unplaced), whichever
    came first; None when neither came.

    "Next" means any attempt still open at the kill or started after it: attempts that
    ended before the kill are the lead's history. Timestamps are those of the writing
    transaction's start, so a call placed in a transaction that began just before the
    kill and committed after it counts as 0 s, not as missing."""
    times = [
        a.placed_at
        for a in attempts
        if a.placed_at is not None and (a.ended_at is None or a.ended_at >= kill.at)
    ]
    times += [a.ended_at for a in attempts if a.id == lead.attempt_id and a.ended_at is not None]
    if not times:
        return None
    return max((min(times) - kill.at).total_seconds(), 0.0)


def redispatch_delays(
    kills: Iterable[Kill], attempts: Mapping[int, Sequence[Attempt]]
) -> tuple[list[float], int]:
    """Every (kill, in-flight lead)'s resolution time, and how many never resolved."""
    delays: list[float] = []
    unresolved = 0
    for kill in kills:
        for lead in kill.inflight:
            s = resolution_s(kill, lead, attempts.get(lead.lead_id, ()))
            if s is None:
                unresolved += 1
            else:
                delays.append(s)
    return delays, unresolved


def kill_plan(rng: random.Random, kills: int, span_s: float, gap_s: float) -> list[float]:
    """`kills` random moments in [gap_s, span_s], at least `gap_s` apart."""
    if kills <= 0:
        return []
    room = span_s - gap_s * kills
    if room < 0:
        raise ValueError(f"{kills} kills {gap_s} s apart do not fit in {span_s} s")
    cuts = sorted(rng.uniform(0, room) for _ in range(kills))
    return [c + gap_s * (i + 1) for i, c in enumerate(cuts)]


# --- the run ----------------------------------------------------------------------------

OVERLAPS_SQL = """
    SELECT count(*) AS n FROM call_attempts a JOIN call_attempts b
      ON a.lead_id = b.lead_id AND a.id < b.id
    WHERE a.lead_id BETWEEN %(lo)s AND %(hi)s
      AND a.started_at < coalesce(b.ended_at, 'infinity')
      AND b.started_at < coalesce(a.ended_at, 'infinity')
"""


def command_of(name: str) -> str:
    return "scheduler" if name.startswith("scheduler") else "worker"


def kill_one(w: World, name: str) -> Kill:
    """List the leads in flight and SIGKILL `name` right after, then return the record."""
    with w.connect() as conn:
        # The clock first: a lead that moves on between it and the list resolves at ~0 s
        # (its call is placed after the recorded kill time), it is never lost.
        clock = conn.execute("SELECT clock_timestamp() AS at").fetchone()
        rows = conn.execute(
            "SELECT id, status, current_attempt_id FROM leads WHERE status IN ('QUEUED', 'DIALING')"
        ).fetchall()
    assert clock is not None
    w.procs.kill(name)
    inflight = tuple(InFlight(r["id"], r["status"], r["current_attempt_id"]) for r in rows)
    return Kill(name, clock["at"], inflight)


def crash_run(
    w: World,
    leads: int,
    rate: float,
    kills: int,
    restart_delay_s: float,
    seed: int,
    settle_timeout_s: float,
) -> CrashResult:
    """Load, kill at random, wait for every lead to be final, then score."""
    rng = random.Random(seed)
    span_s = leads / rate
    start = w.db_now() + dt.timedelta(seconds=2 + leads / 20_000)
    due = [start + dt.timedelta(seconds=i / rate) for i in range(leads)]
    lo, hi = w.load(due)
    result = CrashResult(lo=lo, hi=hi)
    targets = [n for n in w.procs.procs if n.startswith("scheduler")] + list(WORKER_SERVICES)
    for at_s in kill_plan(rng, kills, span_s, restart_delay_s + 1):
        wait = (start - w.db_now()).total_seconds() + at_s
        if wait > 0:
            time.sleep(wait)
        name = rng.choice(targets)
        result.kills.append(kill_one(w, name))
        time.sleep(restart_delay_s)
        w.procs.start(name, command_of(name))

    def settled() -> bool:
        w.procs.check_alive()
        with w.connect() as conn:
            row = conn.execute(
                "SELECT count(*) AS n FROM leads WHERE id BETWEEN %s AND %s"
                " AND NOT (status = ANY(%s))",
                (lo, hi, list(FINAL)),
            ).fetchone()
        return row is not None and row["n"] == 0

    all_final = wait_until(settled, settle_timeout_s, interval_s=0.5)
    result.metrics = score(w, result, all_final)
    return result


def score(w: World, result: CrashResult, all_final: bool) -> dict[str, float]:
    ids = sorted({lead.lead_id for k in result.kills for lead in k.inflight})
    with w.connect() as conn:
        rows = conn.execute(
            "SELECT id, lead_id, placed_at, ended_at FROM call_attempts WHERE lead_id = ANY(%s)",
            (ids,),
        ).fetchall()
        overlaps = conn.execute(OVERLAPS_SQL, {"lo": result.lo, "hi": result.hi}).fetchone()
        counts = conn.execute(
            "SELECT status, count(*) AS n FROM leads WHERE id BETWEEN %s AND %s GROUP BY status",
            (result.lo, result.hi),
        ).fetchall()
        multi = conn.execute(
            "SELECT count(*) AS n FROM (SELECT lead_id FROM call_attempts"
            " WHERE lead_id BETWEEN %s AND %s GROUP BY lead_id HAVING count(*) > 1) m",
            (result.lo, result.hi),
        ).fetchone()
    attempts: dict[int, list[Attempt]] = {}
    for r in rows:
        attempts.setdefault(r["lead_id"], []).append(
            Attempt(r["id"], r["lead_id"], r["placed_at"], r["ended_at"])
        )
    delays, unresolved = redispatch_delays(result.kills, attempts)
    out: dict[str, float] = {
        "leads": float(result.hi - result.lo + 1),
        "kills": float(len(result.kills)),
        "kills_scheduler": float(sum(k.name.startswith("scheduler") for k in result.kills)),
        "kills_worker": float(sum(k.name.startswith("worker") for k in result.kills)),
        "inflight_at_kills": float(sum(len(k.inflight) for k in result.kills)),
        "unresolved": float(unresolved),
        "redispatch_over_1s": float(sum(d > 1 for d in delays)),
        "all_final": float(all_final),
        "overlapping_attempts": float(overlaps["n"] if overlaps else -1),
        "leads_with_several_attempts": float(multi["n"] if multi else -1),
        "lease_s": w.settings.lease_s,
    }
    out.update({f"status.{r['status']}": float(r["n"]) for r in counts})
    summary = stats.latency_summary(delays)
    out.update({f"redispatch_{k}_s": float(v) for k, v in summary.items() if k != "count"})
    if w.shape.mode == SIMULATOR:
        sim = httpx.get(f"{w.settings.simulator_url}/sim/stats", timeout=10).json()
        out["sim.duplicate_dials"] = float(sim["duplicate_dials"])
        out["sim.channel_violations"] = float(sim["channel_violations"])
    return out


def run(
    env: BenchEnv,
    shape: Shape,
    leads: int,
    rate: float,
    kills: int,
    restart_delay_s: float,
    seed: int,
    settle_timeout_s: float,
) -> dict[str, float]:
    with world(env, shape, "crash") as w:
        w.procs.start(WORKER_SERVICES[1], "worker")
        return crash_run(w, leads, rate, kills, restart_delay_s, seed, settle_timeout_s).metrics


def inflight_ids(kills: Iterable[Kill]) -> list[tuple[dt.datetime, int, uuid.UUID | None]]:
    """(kill time, lead id, attempt id) of every in-flight lead: what an independent check
    needs."""
    return [(k.at, lead.lead_id, lead.attempt_id) for k in kills for lead in k.inflight]
