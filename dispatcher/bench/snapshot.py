"""`bench snapshot`: a steady load while another session holds a REPEATABLE READ snapshot.

A held snapshot keeps every row version that was live when it was taken: vacuum can
remove nothing newer, so the leads rows (updated at every status change, none of them
HOT because `status` is in the partial indexes' predicates) and their index entries pile
up. The scenario measures what that costs while it lasts and how long the system takes
to recover after the snapshot is released.

Phases, timed from the first due lead: settle, baseline, held, after release (until back
to baseline for `hold_windows` windows in a row, or a limit). A feeder thread loads the
leads a few seconds ahead of their due times, so the offered load lasts the whole run.

Every `sample_s` a sample reads dead tuples (pg_stat_user_tables) and the sizes of the
leads indexes; each window between two samples gets the calls placed in it (from
call_attempts: placed/s and the p99 pickup latency of those calls). The full series goes
to a side file `snapshot-series-STAMP.json` in --out-dir; the results JSON holds flat
summary numbers (the recorder takes only floats).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import IsolationLevel

from dispatcher.bench import stats
from dispatcher.bench.env import BenchEnv
from dispatcher.bench.world import Shape, World, world

HOT_TABLES = ("leads", "lead_events", "call_attempts")


# --- the arithmetic (unit-tested in tests/unit/test_bench_series.py) --------------------


@dataclass(frozen=True)
class Window:
    """The calls placed in (start, end] (seconds from the run's origin) and the dead
    tuples of the hot tables at its end."""

    start: float
    end: float
    placed: int
    p99_ms: float | None
    dead: float

    @property
    def placed_per_s(self) -> float:
        return stats.rate(self.placed, self.end - self.start)


@dataclass(frozen=True)
class Baseline:
    placed_per_s: float  # median of the baseline windows
    p99_ms: float  # median of the baseline windows' p99
    dead: float  # most dead tuples seen in a baseline window


def windows(
    samples: Sequence[tuple[float, float]], placed: Sequence[tuple[float, float]]
) -> list[Window]:
    """Windows between consecutive samples (t, dead tuples): the calls (placed t,
    pickup ms) placed in each, their p99, and the dead tuples at the window's end."""
    out: list[Window] = []
    ordered = sorted(placed)
    i = 0
    for (t0, _), (t1, dead) in itertools.pairwise(samples):
        while i < len(ordered) and ordered[i][0] <= t0:
            i += 1
        j = i
        while j < len(ordered) and ordered[j][0] <= t1:
            j += 1
        lat = [ms for _, ms in ordered[i:j]]
        p99 = stats.percentile(lat, 99) if lat else None
        out.append(Window(t0, t1, j - i, p99, dead))
        i = j
    return out


def baseline(ws: Sequence[Window], start: float, end: float) -> Baseline:
    """The reference of the baseline windows inside [start, end]."""
    inside = [w for w in ws if w.start >= start and w.end <= end]
    if not inside:
        raise ValueError("no baseline window")
    p99s = [w.p99_ms for w in inside if w.p99_ms is not None]
    return Baseline(
        statistics.median(w.placed_per_s for w in inside),
        statistics.median(p99s) if p99s else 0.0,
        max(w.dead for w in inside),
    )


def at_baseline(w: Window, base: Baseline, tol: float, cleared: bool) -> bool:
    """Throughput and p99 within `tol` of the baseline, and the dead tuples of the hold
    being cleared: `cleared` says that their count has fallen at least once since the
    release (a vacuum ran). Between two vacuums dead tuples rise again in a sawtooth at
    any load, so their level alone says nothing about the held snapshot's backlog."""
    if w.placed_per_s < (1 - tol) * base.placed_per_s:
        return False
    if w.p99_ms is not None and w.p99_ms > (1 + tol) * base.p99_ms:
        return False
    return cleared


def back_to_baseline_s(
    ws: Sequence[Window], release: float, base: Baseline, tol: float = 0.10, hold: int = 3
) -> float | None:
    """Seconds from `release` to the end of the first window after it that starts `hold`
    consecutive windows at baseline; None if that never happened."""
    ok: list[tuple[Window, bool]] = []
    cleared = False
    for k, w in enumerate(ws):
        if w.start < release:
            continue
        cleared = cleared or (k > 0 and w.dead < ws[k - 1].dead)
        ok.append((w, at_baseline(w, base, tol, cleared)))
    for n, (w, _) in enumerate(ok):
        run = ok[n : n + hold]
        if len(run) < hold:
            return None
        if all(good for _, good in run):
            return w.end - release
    return None


def phase_summary(ws: Sequence[Window], start: float, end: float) -> dict[str, float]:
    """Placed/s over a phase (calls placed / its length), its worst window, worst p99."""
    inside = [w for w in ws if w.start >= start and w.end <= end]
    if not inside:
        return {}
    span = inside[-1].end - inside[0].start
    p99s = [w.p99_ms for w in inside if w.p99_ms is not None]
    out = {
        "placed_per_s": stats.rate(sum(w.placed for w in inside), span),
        "min_window_placed_per_s": min(w.placed_per_s for w in inside),
        "dead_max": max(w.dead for w in inside),
    }
    if p99s:
        out["p99_max_ms"] = max(p99s)
        out["p99_median_ms"] = statistics.median(p99s)
    return out


# --- the run ----------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds from the origin, DB clock
    dead: dict[str, int]
    live: dict[str, int]
    autovacuums: dict[str, int]
    index_bytes: dict[str, int]

    @property
    def dead_total(self) -> float:
        return float(sum(self.dead.values()))


def sample(conn: psycopg.Connection[Any], origin: dt.datetime) -> Sample:
    rows = conn.execute(
        "SELECT relname, n_dead_tup, n_live_tup, autovacuum_count, extract(epoch FROM now() - %s)"
        " FROM pg_stat_user_tables WHERE relname = ANY(%s)",
        (origin, list(HOT_TABLES)),
    ).fetchall()
    idx = conn.execute(
        "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid)"
        " FROM pg_index WHERE indrelid = 'leads'::regclass"
    ).fetchall()
    return Sample(
        float(rows[0][4]),
        {r[0]: int(r[1]) for r in rows},
        {r[0]: int(r[2]) for r in rows},
        {r[0]: int(r[3]) for r in rows},
        {r[0]: int(r[1]) for r in idx},
    )


@dataclass
class Feeder:
    """Loads the leads due at `rate`/s from `origin` on, `ahead_s` before they are due."""

    w: World
    origin: dt.datetime
    rate: float
    ahead_s: float = 8.0
    chunk_s: float = 2.0
    loaded: int = 0
    unplaced: set[int] = field(default_factory=set)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                elapsed = (self.w.db_now() - self.origin).total_seconds()
                want = int((elapsed + self.ahead_s) * self.rate)
                if want - self.loaded >= self.chunk_s * self.rate or self.loaded == 0:
                    due = [
                        self.origin + dt.timedelta(seconds=i / self.rate)
                        for i in range(self.loaded, want)
                    ]
                    lo, hi = self.w.load(due, phone_offset=self.loaded)
                    with self._lock:
                        self.unplaced.update(range(lo, hi + 1))
                    self.loaded = want
                self._stop.wait(self.chunk_s / 4)
        except BaseException as exc:  # surfaced by the main loop
            self.error = exc

    def stop(self) -> None:
        self._stop.set()


@contextlib.contextmanager
def feeding(feeder: Feeder) -> Iterator[Feeder]:
    thread = threading.Thread(target=feeder.run, name="snapshot-feeder", daemon=True)
    thread.start()
    try:
        yield feeder
    finally:
        feeder.stop()
        thread.join(timeout=60)


@dataclass
class Collector:
    """Calls placed so far, read incrementally from call_attempts by lead id."""

    origin: dt.datetime
    placed: dict[int, tuple[float, float]] = field(default_factory=dict)  # id: (t, ms)
    _since: dt.datetime | None = None

    def poll(self, conn: psycopg.Connection[Any], feeder: Feeder) -> None:
        with feeder._lock:
            watermark = min(feeder.unplaced, default=None)
        if watermark is None:
            return
        rows = conn.execute(
            "SELECT lead_id, due_at, placed_at FROM call_attempts"
            " WHERE lead_id >= %s AND attempt_no = 1 AND placed_at IS NOT NULL"
            " AND placed_at > %s",
            (watermark, self._since or self.origin - dt.timedelta(hours=1)),
        ).fetchall()
        newest = self._since
        for lead_id, due, placed in rows:
            self.placed[lead_id] = (
                (placed - self.origin).total_seconds(),
                (placed - due).total_seconds() * 1000,
            )
            newest = placed if newest is None else max(newest, placed)
        if newest is not None:
            # Calls commit a little after their placed_at: look back a margin next time.
            self._since = newest - dt.timedelta(seconds=10)
        with feeder._lock:
            feeder.unplaced.difference_update(lead for lead, *_ in rows)


@dataclass
class SnapshotResult:
    origin: dt.datetime  # t = 0 of the windows and samples: the first lead's due time
    windows: list[Window]
    samples: list[Sample]
    marks: dict[str, float]  # "hold", "release": seconds from the origin (DB clock)
    metrics: dict[str, float]


def snapshot_run(
    w: World,
    rate: float,
    settle_s: float,
    baseline_s: float,
    hold_s: float,
    after_max_s: float,
    sample_s: float,
    tolerance: float,
    hold_windows: int,
) -> SnapshotResult:
    """Feed, sample, hold the snapshot, release it, wait for the baseline, score."""
    origin = w.db_now() + dt.timedelta(seconds=3)
    feeder = Feeder(w, origin, rate)
    collector = Collector(origin)
    samples: list[Sample] = []
    marks: dict[str, float] = {}
    held: psycopg.Connection[Any] | None = None
    hold_at = settle_s + baseline_s
    release_at = hold_at + hold_s
    limit = release_at + after_max_s
    # Plain tuples (World.connect gives dicts): sample() and poll() read by position.
    with psycopg.connect(w.database_url, autocommit=True) as conn, feeding(feeder):
        next_t = 0.0
        try:
            while True:
                if feeder.error is not None:
                    raise RuntimeError("the feeder failed") from feeder.error
                w.procs.check_alive()
                now = (w.db_now() - origin).total_seconds()
                if held is None and "hold" not in marks and now >= hold_at:
                    held = psycopg.connect(w.database_url)
                    held.isolation_level = IsolationLevel.REPEATABLE_READ
                    held.execute("SELECT count(*) FROM leads WHERE id < 0")  # takes the snapshot
                    marks["hold"] = (w.db_now() - origin).total_seconds()
                if held is not None and now >= release_at:
                    held.rollback()
                    held.close()
                    held = None
                    marks["release"] = (w.db_now() - origin).total_seconds()
                if now >= next_t:
                    collector.poll(conn, feeder)
                    samples.append(sample(conn, origin))
                    next_t = samples[-1].t + sample_s
                if "release" in marks and len(samples) > 1:
                    ws = _windows(samples, collector)
                    base = baseline(ws, settle_s, hold_at)
                    back = back_to_baseline_s(ws, marks["release"], base, tolerance, hold_windows)
                    if back is not None or now >= limit:
                        break
                time.sleep(min(0.5, sample_s / 4))
        finally:
            if held is not None:
                held.close()
    ws = _windows(samples, collector)
    out = summarize(ws, samples, marks, settle_s, hold_at, tolerance, hold_windows)
    out["offered_per_s"] = rate
    out["loaded"] = float(feeder.loaded)
    return SnapshotResult(origin, ws, samples, marks, out)


def run(
    env: BenchEnv,
    shape: Shape,
    rate: float,
    settle_s: float,
    baseline_s: float,
    hold_s: float,
    after_max_s: float,
    sample_s: float,
    tolerance: float,
    hold_windows: int,
    series_dir: Path | None,
) -> dict[str, float]:
    with world(env, shape, "snapshot") as w:
        r = snapshot_run(
            w, rate, settle_s, baseline_s, hold_s, after_max_s, sample_s, tolerance, hold_windows
        )
    if series_dir is not None:
        write_series(series_dir, r.windows, r.samples, r.marks, r.metrics)
    return r.metrics


def _windows(samples: Sequence[Sample], collector: Collector) -> list[Window]:
    return windows([(s.t, s.dead_total) for s in samples], list(collector.placed.values()))


def summarize(
    ws: Sequence[Window],
    samples: Sequence[Sample],
    marks: dict[str, float],
    settle_s: float,
    hold_at: float,
    tolerance: float,
    hold_windows: int,
) -> dict[str, float]:
    """The flat numbers of one run: baseline, held and after phases, recovery time."""
    base = baseline(ws, settle_s, hold_at)
    hold, release = marks["hold"], marks["release"]
    out: dict[str, float] = {
        "baseline.placed_per_s": base.placed_per_s,
        "baseline.p99_ms": base.p99_ms,
        "baseline.dead": base.dead,
        "hold_s": release - hold,
    }
    for name, (a, b) in {"held": (hold, release), "after": (release, ws[-1].end)}.items():
        out.update({f"{name}.{k}": v for k, v in phase_summary(ws, a, b).items()})
    if "held.placed_per_s" in out and base.placed_per_s:
        out["held.throughput_pct_of_baseline"] = 100 * out["held.placed_per_s"] / base.placed_per_s
    back = back_to_baseline_s(ws, release, base, tolerance, hold_windows)
    out["recovered"] = float(back is not None)
    if back is not None:
        out["back_to_baseline_s"] = back
    for table in HOT_TABLES:
        out[f"dead.{table}.peak"] = float(max(s.dead.get(table, 0) for s in samples))
        out[f"dead.{table}.end"] = float(samples[-1].dead.get(table, 0))
    index_mib = [sum(s.index_bytes.values()) / 2**20 for s in samples]
    before = [m for s, m in zip(samples, index_mib, strict=True) if s.t <= hold]
    out["leads_indexes_mib.before_hold"] = before[-1] if before else index_mib[0]
    out["leads_indexes_mib.peak"] = max(index_mib)
    out["leads_indexes_mib.end"] = index_mib[-1]
    out["autovacuums.leads"] = float(
        samples[-1].autovacuums.get("leads", 0) - samples[0].autovacuums.get("leads", 0)
    )
    return out


def write_series(
    directory: Path,
    ws: Sequence[Window],
    samples: Sequence[Sample],
    marks: dict[str, float],
    summary: dict[str, float],
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    path = directory / f"snapshot-series-{stamp}.json"
    doc = {
        "marks_s": marks,
        "summary": summary,
        "windows": [{**asdict(w), "placed_per_s": w.placed_per_s} for w in ws],
        "samples": [asdict(s) for s in samples],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path
