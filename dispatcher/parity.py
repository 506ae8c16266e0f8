"""The parity report: what the shadow ZSET schedule would have dispatched against what the
PostgreSQL schedule did dispatch, over the same traffic.

Both paths write `parity_observations` rows (path 'pg' at each real claim, path 'zset' at
each shadow consumer pop) and the shadow writes its faults to `shadow_events`. A *key* is
one (lead_id, attempt_no); each path's FIRST observation of a key counts (a deferral
re-schedules a lead, and both paths may see it again). One SQL aggregate pairs the two
paths (a GROUP BY with one min() per path, which is what a FULL JOIN of the per-path
firsts gives, in one pass); Python then computes what SQL does poorly: nearest-rank
percentiles, the inversion count (merge sort) and the classification of divergences.

The window: a key belongs to [since, until) when its earliest observation (either path)
falls in it. Observations up to PAIR_SLACK outside the window are still read, so a pair
that straddles an edge is not split into two one-sided keys.

Time is handled as integer microseconds since the epoch throughout, so comparisons and
skews are exact (a skew of exactly the threshold is not a divergence).
"""

from __future__ import annotations

import datetime as dt
import math
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from psycopg.rows import tuple_row

if TYPE_CHECKING:
    from psycopg import Connection

DEFAULT_THRESHOLD_MS = 1000.0  # |zset - pg| above this makes a pair a divergence
PROMOTER_GAP_MS = 1000.0  # a promoter hand-over slower than this is a pause
PROMOTER_TICK_MS = 200.0  # the promoter's tick: the first one after a takeover drains the gap
# A flush is recorded when a scheduler finds the sentinel gone: every scheduler checks it
# every second from a control loop that wakes every 0.1 s, and the event's time is that
# check, so the flush itself happened up to this long before the recorded time.
FLUSH_DETECT_S = 1.0 + 0.1 + PROMOTER_TICK_MS / 1000
# The backlog reconciler's interval (the setting's default): a key lost in a flush stays
# lost until a pass re-adds it, at the latest one interval after the flush's last re-add.
RECONCILE_S = 60.0
CANCEL_WINDOW_S = 5.0  # a cancel this close to the key's life is a race
PAIR_SLACK = dt.timedelta(hours=1)  # read this far outside the window to complete pairs
EXAMPLES = 5
WORK_MEM = "256MB"  # for the report's one big GROUP BY and sort, this transaction only
HIST_BINS = 40
CLASSES = (
    "dual_write_failed",
    "redis_flushed",
    "promoter_down",
    "cancel_race",
    "retry_not_mirrored",
    "other",
)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
US_PER_MS = 1000
US_PER_S = 1_000_000
US_PER_HOUR = 3600 * US_PER_S


# --- pure helpers (unit-tested) ------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest rank: the value at 1-based rank ceil(p/100 * n) of the sorted values, i.e.
    the smallest value with at least p % of the values at or below it; always one of the
    values (never interpolated), so a p99 is a skew some dispatch really had. The rank is
    computed exactly (Fraction), so no float rounding can move it by one (0.95 * 20 in
    floats is 19.000000000000004, whose ceiling would be 20)."""
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100], not {p}")
    n = len(sorted_values)
    if n == 0:
        return None
    rank = max(1, math.ceil(Fraction(str(p)) * n / 100))
    return sorted_values[rank - 1]


def skew_stats(values: Iterable[float]) -> dict[str, Any]:
    """p50/p95/p99/max/min/count of skews in ms (None for no pairs)."""
    return sorted_stats(sorted(values))


def sorted_stats(ordered: Sequence[float]) -> dict[str, Any]:
    """skew_stats of values already sorted (the report sorts a million skews once)."""
    return {
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": ordered[-1] if ordered else None,
        "min": ordered[0] if ordered else None,
        "count": len(ordered),
    }


def count_inversions(values: Sequence[float]) -> int:
    """Pairs i < j with values[i] > values[j] (strictly: equal values are not an
    inversion), by a bottom-up merge sort in O(n log n); never builds the n² pairs."""
    a = list(values)
    n = len(a)
    inversions = 0
    width = 1
    while width < n:
        for lo in range(0, n - width, 2 * width):
            mid = lo + width
            if a[mid - 1] <= a[mid]:
                continue  # already in order: nothing to count or move (most real runs)
            hi = min(mid + width, n)
            left, right = a[lo:mid], a[mid:hi]
            nl, nr = mid - lo, hi - mid
            i = j = 0
            k = lo
            while i < nl and j < nr:
                if right[j] < left[i]:
                    a[k] = right[j]
                    j += 1
                    inversions += nl - i  # every left value still unmerged is greater
                else:
                    a[k] = left[i]
                    i += 1
                k += 1
            if i < nl:
                a[k:hi] = left[i:]
            else:
                a[k:hi] = right[j:]
        width *= 2
    return inversions


def parity_pct(both: int, pg_only: int, zset_only: int) -> float:
    """both / all keys * 100; 100 when nothing was dispatched (nothing disagreed)."""
    total = both + pg_only + zset_only
    return 100.0 if total == 0 else both * 100.0 / total


def to_us(at: dt.datetime) -> int:
    """Exact integer microseconds since the epoch (timezone-aware datetimes)."""
    d = at - EPOCH
    return (d.days * 86400 + d.seconds) * US_PER_S + d.microseconds


def from_us(us: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=us)


# --- classification ------------------------------------------------------------------


@dataclass
class Divergence:
    """A key seen by one path only, or a pair further apart than the threshold."""

    lead_id: int
    attempt_no: int
    reseller_id: str
    path: str  # 'pg' or 'zset' (the side that saw it), 'both' for a late pair
    due_us: int | None
    pg_us: int | None
    zset_us: int | None
    cls: str = "other"

    @property
    def first_us(self) -> int:
        return min(t for t in (self.pg_us, self.zset_us) if t is not None)

    @property
    def last_us(self) -> int:
        return max(t for t in (self.pg_us, self.zset_us) if t is not None)

    @property
    def start_us(self) -> int:
        """When the key became exposed: its due time, or its first observation."""
        return self.first_us if self.due_us is None else min(self.due_us, self.first_us)

    @property
    def skew_ms(self) -> float | None:
        if self.pg_us is None or self.zset_us is None:
            return None
        return (self.zset_us - self.pg_us) / US_PER_MS


@dataclass
class Flush:
    at_us: int
    detected_by: str | None
    heal_end_us: int | None = None  # the last reconcile_readded before the next flush
    readded: int = 0


@dataclass
class PromoterGap:
    start_us: int
    end_us: int  # the promoter_acquired event
    holder: str | None
    gap_ms: float


@dataclass
class Context:
    """The facts classification reads, fetched once per report (times in µs)."""

    dual_write: dict[int, list[int]] = field(default_factory=dict)  # lead → sorted times
    readded: set[tuple[int, int | None]] = field(default_factory=set)  # (lead, attempt|None)
    flushes: list[Flush] = field(default_factory=list)  # sorted by time
    promoter_gaps: list[PromoterGap] = field(default_factory=list)
    cancels: dict[int, list[int]] = field(default_factory=dict)  # lead → sorted times
    # lead → sorted times it left the schedule or was put back (final, retry, deferral)
    rescheduled: dict[int, list[int]] = field(default_factory=dict)
    previous: dict[tuple[int, int], int] = field(default_factory=dict)  # key → first obs
    tolerance_us: int = int(DEFAULT_THRESHOLD_MS * US_PER_MS)
    cancel_window_us: int = int(CANCEL_WINDOW_S * US_PER_S)

    backlog: dict[int, list[int]] = field(default_factory=dict)  # lead → into-BACKLOG times
    detect_us: int = int(FLUSH_DETECT_S * US_PER_S)
    tick_us: int = int(PROMOTER_TICK_MS * US_PER_MS)
    reconcile_us: int = int(RECONCILE_S * US_PER_S)

    def flush_heal_us(self, flush: Flush) -> int:
        return 0 if flush.heal_end_us is None else max(flush.heal_end_us - flush.at_us, 0)

    def scheduled_us(self, d: Divergence) -> int | None:
        """When the key was last put on the schedule before it was first observed: the
        lead's latest transition into BACKLOG (created, a retry, a deferral, an expired
        lease) at or before that observation; the mirror ZADDs in that same transaction."""
        times = self.backlog.get(d.lead_id)
        if not times:
            return None
        i = bisect_right(times, d.first_us)
        return times[i - 1] if i else None


def _any_between(times: Sequence[int], lo: int, hi: int) -> bool:
    """Some t in sorted `times` with lo <= t <= hi."""
    i = bisect_left(times, lo)
    return i < len(times) and times[i] <= hi


def matching_flush(d: Divergence, ctx: Context) -> Flush | None:
    """The latest flush that explains `d`, recorded no later than its last observation plus
    the detection lag (FLUSH_DETECT_S), and either

    - recorded at or after the key was scheduled, the key first observed before the
      reconciler had restored what the flush took (its last re-add + one RECONCILE_S): the
      key was in the ZSET, a ready list or a processing list when Redis lost it (a retry
      ZADDed before the flush and due after it is lost too, and the real path may claim it
      before the reconciler re-adds it), or
    - recorded before its due time while that flush was still healing (until its last
      reconcile_readded, + tolerance): the key became due while both designs were
      rebuilding what Redis lost."""
    tol = ctx.tolerance_us
    scheduled = ctx.scheduled_us(d)
    hit = None
    for f in ctx.flushes:
        if f.at_us > d.last_us + ctx.detect_us:
            break
        restored_by = (f.at_us if f.heal_end_us is None else f.heal_end_us) + ctx.reconcile_us
        lost = scheduled is not None and scheduled <= f.at_us and d.first_us <= restored_by
        if lost or f.at_us >= d.start_us - ctx.flush_heal_us(f) - tol:
            hit = f
    return hit


def finished_before_promotion(d: Divergence, ctx: Context) -> bool:
    """Only PostgreSQL dispatched the key, and its lead left the attempt (final status,
    retry, deferral) after that claim but no later than the ZSET's first promoter tick
    after the due time (due + one tick, + one tick for the tick's own phase)."""
    if d.path != "pg" or d.due_us is None or d.pg_us is None:
        return False
    ends = ctx.rescheduled.get(d.lead_id)
    return bool(ends) and _any_between(ends, d.pg_us, d.due_us + 2 * ctx.tick_us)


def matching_gap(d: Divergence, ctx: Context) -> PromoterGap | None:
    """A promoter pause (no tick for more than PROMOTER_GAP_MS) that the key waited
    through: it became due before the first tick after the takeover (takeover + one tick,
    + tolerance) and was still unobserved by one path when the last tick before the pause
    ran (- tolerance). Keys due in the pause are promoted in one burst by that tick."""
    tol = ctx.tolerance_us
    for g in ctx.promoter_gaps:
        if g.start_us - tol <= d.last_us and d.start_us <= g.end_us + ctx.tick_us + tol:
            return g
    return None


def classify(d: Divergence, ctx: Context) -> str:
    """The first rule that matches, in this order (so a cause explains before a symptom):

    dual_write_failed: a dual_write_failed event for the lead after its previous attempt
        was first observed (if any) and before this key's last observation (+ tolerance):
        the mirror write was lost, so the ZSET never had, or never dropped, the lead.
    redis_flushed: a reconcile_readded event for this lead and attempt (or with no
        attempt), or a redis_flushed event recorded between the key's scheduling time (its
        lead's latest transition into BACKLOG before its first observation: creation, the
        previous attempt's end, a deferral) and its last observation (+ FLUSH_DETECT_S),
        the key observed before the flush's last re-add + RECONCILE_S; or before its due
        time while that flush was still healing (matching_flush).
    promoter_down: a promoter_acquired with gap_ms > PROMOTER_GAP_MS whose pause the key
        waited through: due before takeover + one tick, and still unobserved by one path
        at the last tick before the pause (matching_gap).
    cancel_race: the lead went CANCELLED (lead_events) within CANCEL_WINDOW_S of the time
        from its due time to its last observation: one path dispatched, the other had
        already dropped it. Or (finished_before_promotion) PostgreSQL alone dispatched it
        and the lead then ended, or was put back for a retry or a deferral, before the
        ZSET's first promoter tick after the due time: the seed's own ZREM on finish (or
        ZADD on retry) removed the member before its promoter moved it. Calls that end in
        less than a tick (failed at once, a provider error) do this.
    retry_not_mirrored: attempt_no > 1 and only PostgreSQL dispatched it: the retry's
        ZADD never happened.
    other: nothing above; unexplained, and what blocks a migration.
    """
    tol = ctx.tolerance_us
    fails = ctx.dual_write.get(d.lead_id)
    if fails:
        lo = ctx.previous.get((d.lead_id, d.attempt_no - 1), fails[0])
        if _any_between(fails, lo, d.last_us + tol):
            return "dual_write_failed"
    if (d.lead_id, d.attempt_no) in ctx.readded or (d.lead_id, None) in ctx.readded:
        return "redis_flushed"
    if matching_flush(d, ctx) is not None:
        return "redis_flushed"
    if matching_gap(d, ctx) is not None:
        return "promoter_down"
    cancels = ctx.cancels.get(d.lead_id)
    w = ctx.cancel_window_us
    if cancels and _any_between(cancels, d.start_us - w, d.last_us + w):
        return "cancel_race"
    if finished_before_promotion(d, ctx):
        return "cancel_race"
    if d.attempt_no > 1 and d.path == "pg":
        return "retry_not_mirrored"
    return "other"


# --- the report ----------------------------------------------------------------------


@dataclass
class _Tally:
    """Counts and skews of one group (everything, a reseller, an hour)."""

    both: int = 0
    pg_only: int = 0
    zset_only: int = 0
    skews: list[float] = field(default_factory=list)
    zset_seq: list[int] = field(default_factory=list)  # zset times in pg order
    divergences: int = 0
    classes: Counter[str] = field(default_factory=Counter)

    def add(self, pg_us: int | None, zset_us: int | None) -> None:
        if pg_us is None:
            self.zset_only += 1
        elif zset_us is None:
            self.pg_only += 1
        else:
            self.both += 1
            self.skews.append((zset_us - pg_us) / US_PER_MS)
            self.zset_seq.append(zset_us)

    def counts(self) -> dict[str, Any]:
        return {
            "both": self.both,
            "pg_only": self.pg_only,
            "zset_only": self.zset_only,
            "parity_pct": parity_pct(self.both, self.pg_only, self.zset_only),
        }


_KEYS_SQL = """
SELECT lead_id, attempt_no, reseller_id, due_us, pg_us, zset_us
FROM (
    SELECT lead_id, attempt_no,
           min(reseller_id) AS reseller_id,
           (extract(epoch FROM min(due_at)) * 1000000)::bigint AS due_us,
           (extract(epoch FROM min(observed_at) FILTER (WHERE path = 'pg')) * 1000000)::bigint
               AS pg_us,
           (extract(epoch FROM min(observed_at) FILTER (WHERE path = 'zset')) * 1000000)::bigint
               AS zset_us
    FROM parity_observations
    WHERE {where}
    GROUP BY lead_id, attempt_no
) k
WHERE {window}
ORDER BY pg_us NULLS LAST, zset_us
"""


def _fetch_keys(
    conn: Connection,
    since: dt.datetime | None,
    until: dt.datetime | None,
    reseller: str | None,
) -> list[tuple[int, int, str, int | None, int | None, int | None]]:
    """Every key of the window with each path's first observation, in PostgreSQL's
    dispatch order (ties by the ZSET's: a tie is then never an inversion)."""
    where, window = ["true"], ["true"]
    params: dict[str, Any] = {"reseller": reseller}
    if since is not None:
        where.append("observed_at >= %(lo)s")
        window.append("least(pg_us, zset_us) >= %(since_us)s")
        params |= {"lo": since - PAIR_SLACK, "since_us": to_us(since)}
    if until is not None:
        where.append("observed_at < %(hi)s")
        window.append("least(pg_us, zset_us) < %(until_us)s")
        params |= {"hi": until + PAIR_SLACK, "until_us": to_us(until)}
    if reseller is not None:
        where.append("reseller_id = %(reseller)s")
    sql = _KEYS_SQL.format(where=" AND ".join(where), window=" AND ".join(window))
    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        # A day's keys group and sort in memory rather than in temporary files.
        cur.execute("SELECT set_config('work_mem', %s, true)", (WORK_MEM,))
        cur.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall()


def _fetch_context(
    conn: Connection,
    divergences: Sequence[Divergence],
    lo: dt.datetime | None,
    hi: dt.datetime | None,
    threshold_ms: float,
) -> tuple[Context, list[dict[str, Any]]]:
    """The events classification needs, and the shadow events of the window (for the
    fault sections). Per-lead facts are read only for the divergent leads."""
    ctx = Context(tolerance_us=int(threshold_ms * US_PER_MS))
    ids = sorted({d.lead_id for d in divergences})
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(
            """
            SELECT (extract(epoch FROM at) * 1000000)::bigint, kind, lead_id, reseller_id,
                   detail
            FROM shadow_events
            WHERE (%(lo)s::timestamptz IS NULL OR at >= %(lo)s)
              AND (%(hi)s::timestamptz IS NULL OR at < %(hi)s)
            ORDER BY at, id
            """,
            {"lo": lo, "hi": hi},
        )
        events = [
            {"at_us": r[0], "kind": r[1], "lead_id": r[2], "reseller_id": r[3], "detail": r[4]}
            for r in cur.fetchall()
        ]
        if ids:
            cur.execute(
                "SELECT lead_id, (extract(epoch FROM at) * 1000000)::bigint FROM lead_events"
                " WHERE to_status = 'CANCELLED' AND lead_id = ANY(%(ids)s) ORDER BY at",
                {"ids": ids},
            )
            for lead_id, at_us in cur.fetchall():
                ctx.cancels.setdefault(lead_id, []).append(at_us)
            # Every change after which the mirror ZREMs the lead (a final status) or ZADDs
            # it again (a retry, a deferral): the seed's own writes, racing its promoter.
            cur.execute(
                "SELECT lead_id, (extract(epoch FROM at) * 1000000)::bigint FROM lead_events"
                " WHERE lead_id = ANY(%(ids)s) AND from_status IS NOT NULL"
                " AND to_status IN ('BACKLOG', 'COMPLETED', 'FAILED', 'EXPIRED', 'SKIPPED',"
                " 'CANCELLED') ORDER BY at",
                {"ids": ids},
            )
            for lead_id, at_us in cur.fetchall():
                ctx.rescheduled.setdefault(lead_id, []).append(at_us)
            cur.execute(
                "SELECT lead_id, attempt_no,"
                " (extract(epoch FROM min(observed_at)) * 1000000)::bigint"
                " FROM parity_observations WHERE lead_id = ANY(%(ids)s)"
                " GROUP BY lead_id, attempt_no",
                {"ids": ids},
            )
            ctx.previous = {(lead, no): at for lead, no, at in cur.fetchall()}
            cur.execute(
                "SELECT lead_id, (extract(epoch FROM at) * 1000000)::bigint FROM lead_events"
                " WHERE to_status = 'BACKLOG' AND lead_id = ANY(%(ids)s) ORDER BY at",
                {"ids": ids},
            )
            for lead_id, at_us in cur.fetchall():
                ctx.backlog.setdefault(lead_id, []).append(at_us)
    wanted = set(ids)
    # Flushes first: a re-add may be recorded before the flush that caused it (the leader's
    # reconcile pass can run before any scheduler's sentinel check notices the flush), so
    # each re-add belongs to the latest flush recorded up to FLUSH_DETECT_S after it.
    for e in events:
        if e["kind"] == "redis_flushed":
            ctx.flushes.append(Flush(e["at_us"], (e["detail"] or {}).get("detected_by")))
    flush_times = [f.at_us for f in ctx.flushes]
    for e in events:
        detail = e["detail"] or {}
        kind, lead = e["kind"], e["lead_id"]
        if kind == "dual_write_failed" and lead in wanted:
            ctx.dual_write.setdefault(lead, []).append(e["at_us"])
        elif kind == "reconcile_readded":
            i = bisect_right(flush_times, e["at_us"] + ctx.detect_us)
            if i:
                f = ctx.flushes[i - 1]
                f.readded += 1
                f.heal_end_us = max(f.heal_end_us or e["at_us"], e["at_us"])
            if lead in wanted:
                no = detail.get("attempt_no")
                ctx.readded.add((lead, int(no) if no is not None else None))
        elif kind == "promoter_acquired":
            gap_ms = float(detail.get("gap_ms") or 0)
            if gap_ms > PROMOTER_GAP_MS:
                start = e["at_us"] - int(gap_ms * US_PER_MS)
                ctx.promoter_gaps.append(
                    PromoterGap(start, e["at_us"], detail.get("holder"), gap_ms)
                )
    return ctx, events


def _histogram(ordered: Sequence[float]) -> dict[str, Any]:
    """HIST_BINS equal bins of the sorted skews from the smallest to the p99.9 (a handful
    of outliers would squash the rest into one bar); `over` counts what lies beyond."""
    if not ordered:
        return {"edges": [], "counts": [], "over": 0}
    lo = ordered[0]
    hi = percentile(ordered, 99.9) or lo
    if hi <= lo:
        hi = lo + 1.0
    width = (hi - lo) / HIST_BINS
    edges = [lo + i * width for i in range(HIST_BINS)] + [hi]
    # Bins are [edge, next edge), the last one closed: counted by bisecting the sorted skews.
    cuts = [bisect_left(ordered, e) for e in edges[:-1]] + [bisect_right(ordered, hi)]
    counts = [cuts[i + 1] - cuts[i] for i in range(HIST_BINS)]
    return {"edges": edges, "counts": counts, "over": len(ordered) - cuts[-1]}


def _timeline(divergences: Sequence[Divergence]) -> dict[str, Any]:
    """Divergences per second (a span up to ten minutes: a rehearsal), per minute (up to six
    hours) or per hour, by class."""
    if not divergences:
        return {"bucket": "minute", "rows": []}
    firsts = [d.first_us for d in divergences]
    span = max(firsts) - min(firsts)
    if span <= 600 * US_PER_S:
        bucket, size = "second", US_PER_S
    elif span <= 6 * US_PER_HOUR:
        bucket, size = "minute", 60 * US_PER_S
    else:
        bucket, size = "hour", US_PER_HOUR
    rows: dict[int, Counter[str]] = defaultdict(Counter)
    for d in divergences:
        rows[d.first_us // size * size][d.cls] += 1
    return {
        "bucket": bucket,
        "rows": [{"at": from_us(at), **dict(rows[at])} for at in sorted(rows)],
    }


def _summary(
    total: int,
    counts: dict[str, Any],
    skew: dict[str, Any],
    classes: Counter[str],
    threshold_ms: float,
) -> str:
    """The verdict in one sentence: how much agreed, how far apart, what diverged, why."""
    if total == 0:
        return "No dispatches observed in this window: nothing to compare."
    text = (
        f"Parity {counts['parity_pct']:.2f} % over {total:,} dispatches"
        f" ({counts['both']:,} by both, {counts['pg_only']:,} by PostgreSQL only,"
        f" {counts['zset_only']:,} by the ZSET only)"
    )
    if skew["count"]:
        worst = max(abs(skew["max"]), abs(skew["min"]))
        text += f"; skew p99 {skew['p99']:,.0f} ms, worst {worst:,.0f} ms"
    n = sum(classes.values())
    if n == 0:
        return text + f"; no divergence (threshold {threshold_ms:,.0f} ms)."
    parts = ", ".join(f"{classes[c]:,} {c}" for c in CLASSES if classes[c])
    unexplained = classes["other"]
    tail = (
        "all explained by a known fault"
        if unexplained == 0
        else f"{unexplained:,} unexplained (class other)"
    )
    return text + f"; {n:,} divergences: {parts}; {tail}."


def build_report(
    conn: Connection,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    reseller: str | None = None,
    *,
    threshold_ms: float = DEFAULT_THRESHOLD_MS,
) -> dict[str, Any]:
    """The parity report of [since, until) (optionally one reseller) as a plain dict:
    counts, skew, inversions, per reseller, per hour, classified divergences, faults and a
    verdict. Read-only; datetimes are timezone-aware (parity_render turns them to text)."""
    rows = _fetch_keys(conn, since, until, reseller)
    total = _Tally()
    by_reseller: dict[str, _Tally] = defaultdict(_Tally)
    by_hour: dict[int, _Tally] = defaultdict(_Tally)
    divergences: list[Divergence] = []
    limit_us = threshold_ms * US_PER_MS
    for lead_id, attempt_no, reseller_id, due_us, pg_us, zset_us in rows:
        first = zset_us if pg_us is None else (pg_us if zset_us is None else min(pg_us, zset_us))
        for t in (total, by_reseller[reseller_id], by_hour[first // US_PER_HOUR]):
            t.add(pg_us, zset_us)
        if pg_us is None or zset_us is None:
            path = "zset" if pg_us is None else "pg"
        elif abs(zset_us - pg_us) > limit_us:
            path = "both"
        else:
            continue
        divergences.append(
            Divergence(lead_id, attempt_no, reseller_id, path, due_us, pg_us, zset_us)
        )
    lo = None if since is None else since - PAIR_SLACK
    hi = None if until is None else until + PAIR_SLACK
    ctx, events = _fetch_context(conn, divergences, lo, hi, threshold_ms)
    classes: Counter[str] = Counter()
    examples: dict[str, list[int]] = {}
    for d in divergences:
        d.cls = classify(d, ctx)
        classes[d.cls] += 1
        by_reseller[d.reseller_id].divergences += 1
        by_reseller[d.reseller_id].classes[d.cls] += 1
        by_hour[d.first_us // US_PER_HOUR].divergences += 1
        ids = examples.setdefault(d.cls, [])
        if len(ids) < EXAMPLES and d.lead_id not in ids:
            ids.append(d.lead_id)

    ordered = sorted(total.skews)
    skew = sorted_stats(ordered)
    n_pairs = total.both
    comparable = n_pairs * (n_pairs - 1) // 2
    inversions = count_inversions(total.zset_seq)
    counts = total.counts()
    worst = None if not skew["count"] else max(abs(skew["max"]), abs(skew["min"]))
    report: dict[str, Any] = {
        "window": {
            "since": since,
            "until": until,
            "reseller": reseller,
            "threshold_ms": threshold_ms,
            "generated_at": dt.datetime.now(dt.UTC),
        },
        **counts,
        "total": total.both + total.pg_only + total.zset_only,
        "skew_ms": skew,
        "skew_histogram": _histogram(ordered),
        "inversions": {
            "pairs": n_pairs,
            "comparable": comparable,
            "count": inversions,
            "pct": 0.0 if comparable == 0 else inversions * 100.0 / comparable,
            "ties": "pairs are ordered by PostgreSQL time; a tie there, or in ZSET time,"
            " is not an inversion",
        },
        "per_reseller": {
            r: {
                **t.counts(),
                "skew_ms": skew_stats(t.skews),
                "inversions": count_inversions(t.zset_seq),
                "divergences": t.divergences,
                "classes": {c: t.classes[c] for c in CLASSES if t.classes[c]},
            }
            for r, t in sorted(by_reseller.items())
        },
        "per_hour": [
            {
                "hour": from_us(h * US_PER_HOUR),
                **{k: v for k, v in t.counts().items() if k != "parity_pct"},
                "skew_p99": percentile(sorted(t.skews), 99),
                "divergences": t.divergences,
            }
            for h, t in sorted(by_hour.items())
        ],
        "divergences": [
            {
                "lead_id": d.lead_id,
                "attempt_no": d.attempt_no,
                "reseller_id": d.reseller_id,
                "path": d.path,
                "class": d.cls,
                "skew_ms": d.skew_ms,
                "due_at": None if d.due_us is None else from_us(d.due_us),
                "observed_at": from_us(d.first_us),
            }
            for d in divergences
        ],
        "classes": {c: classes[c] for c in CLASSES if classes[c]},
        "examples": {c: sorted(examples[c]) for c in CLASSES if c in examples},
        "divergence_timeline": _timeline(divergences),
        "faults": _faults(ctx, events, divergences, since, until, reseller),
        "verdict": {
            "parity_pct": counts["parity_pct"],
            "worst_skew_ms": worst,
            "skew_p99_ms": skew["p99"],
            "unexplained": classes["other"],
            "summary": _summary(
                total.both + total.pg_only + total.zset_only,
                counts,
                skew,
                classes,
                threshold_ms,
            ),
        },
    }
    return report


def _in_window(
    events: Sequence[dict[str, Any]],
    since: dt.datetime | None,
    until: dt.datetime | None,
    reseller: str | None,
) -> list[dict[str, Any]]:
    """The events counted in the fault sections: those of [since, until) exactly (the
    slack read around it serves classification only), and of the reseller when one is
    asked for (events of no reseller, such as a flush, concern every reseller)."""
    lo = None if since is None else to_us(since)
    hi = None if until is None else to_us(until)
    return [
        e
        for e in events
        if (lo is None or e["at_us"] >= lo)
        and (hi is None or e["at_us"] < hi)
        and (reseller is None or e["reseller_id"] in (None, reseller))
    ]


def _faults(
    ctx: Context,
    all_events: Sequence[dict[str, Any]],
    divergences: Sequence[Divergence],
    since: dt.datetime | None,
    until: dt.datetime | None,
    reseller: str | None,
) -> dict[str, Any]:
    """Each flush (heal time, re-added leads, the divergences it caused: missed keys and
    late pairs), each promoter pause, and the dual-write failures by operation; all of
    [since, until)."""
    events = _in_window(all_events, since, until, reseller)
    lo = -math.inf if since is None else to_us(since)
    hi = math.inf if until is None else to_us(until)
    flush_hits: dict[int, list[Divergence]] = defaultdict(list)
    gap_hits: dict[int, int] = Counter()
    for d in divergences:
        if d.cls == "redis_flushed" and (f := matching_flush(d, ctx)) is not None:
            flush_hits[f.at_us].append(d)
        elif d.cls == "promoter_down" and (g := matching_gap(d, ctx)) is not None:
            gap_hits[g.end_us] += 1
    flushes = []
    for f in ctx.flushes:
        if not lo <= f.at_us < hi:
            continue
        hits = flush_hits.get(f.at_us, [])
        late = [d.skew_ms for d in hits if d.skew_ms is not None]
        flushes.append(
            {
                "at": from_us(f.at_us),
                "detected_by": f.detected_by,
                "heal_s": ctx.flush_heal_us(f) / US_PER_S if f.heal_end_us is not None else None,
                "readded": f.readded,
                "missed": len(hits) - len(late),
                "late": len(late),
                "worst_late_ms": max(late, default=None),
            }
        )
    pauses = [
        {
            "at": from_us(g.end_us),
            "gap_ms": g.gap_ms,
            "holder": g.holder,
            "divergences": gap_hits.get(g.end_us, 0),
        }
        for g in ctx.promoter_gaps
        if lo <= g.end_us < hi
    ]
    kinds = Counter(e["kind"] for e in events)
    ops = Counter(
        str((e["detail"] or {}).get("op", "?")) for e in events if e["kind"] == "dual_write_failed"
    )
    return {
        "flushes": flushes,
        "promoter_pauses": pauses,
        "promoter_lost": kinds["promoter_lost"],
        "dual_write_failures": kinds["dual_write_failed"],
        "dual_write_ops": dict(sorted(ops.items())),
        "dual_write_divergences": sum(1 for d in divergences if d.cls == "dual_write_failed"),
        "redis_errors": kinds["redis_error"],
        "reconcile_readded": kinds["reconcile_readded"],
        "reaped": kinds["reaped"],
    }


__all__ = [
    "CLASSES",
    "Context",
    "Divergence",
    "build_report",
    "classify",
    "count_inversions",
    "parity_pct",
    "percentile",
]
