"""Shadow mode end to end: real API, schedulers, workers and simulator, with the seed's ZSET
schedule mirrored beside the real one. Parity on 5,000 leads with retries; then the
faults the report must explain: Redis flushed, the promoter's leader killed, a dual write
that failed. The real path is checked each time: every lead ends as scripted, nobody is
dialed twice."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg.rows import dict_row

from dispatcher.parity import build_report
from tests.e2e.harness import (
    System,
    chunks,
    e2e_settings,
    free_port,
    lead_results,
    private_redis,
    wait_until,
)

TEMPLATE = {
    "calling_window": None,
    "retry": {
        "max_attempts": 3,
        "retry_on": ["busy", "no_answer"],
        "delay_s": 1,
        "backoff": "fixed",
    },
    "frequency_cap": None,
    "execution_mode": "telephony",
}
# (script, final status, attempts): most answer at once, a third retry once or twice.
SCRIPTS = (
    (["answered"], "COMPLETED", 1),
    (["answered"], "COMPLETED", 1),
    (["busy", "answered"], "COMPLETED", 2),
    (["answered"], "COMPLETED", 1),
    (["no_answer", "busy", "answered"], "COMPLETED", 3),
    (["answered"], "COMPLETED", 1),
)


def start_system(
    database_url: str, redis_url: str, log_dir: Path, schedulers: int = 1, **overrides: Any
) -> System:
    settings = e2e_settings(
        database_url,
        redis_url,
        shadow_prefix=f"sh{free_port()}:",
        worker_threads=8,
        **overrides,
    )
    system = System(settings, log_dir)
    system.start("simulator", "simulator")
    system.start("api", "api")
    for i in range(schedulers):
        system.start("scheduler" if i == 0 else f"scheduler-{i + 1}", "scheduler")
    system.start("worker-1", "worker", "--processes", "1")
    system.start("worker-2", "worker", "--processes", "1")
    system.wait_ready()
    return system


def shadow_cli(system: System, *args: str) -> str:
    env = {**os.environ, **system.settings.to_env()}
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "shadow", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


Lead = tuple[str, str, str, int]  # phone, reseller, status, attempts


def post_leads(
    system: System,
    tag: str,
    resellers: tuple[str, ...],
    n: int,
    start_in_s: float,
    spread_s: float,
    scripts: tuple[tuple[list[str], str, int], ...] = SCRIPTS,
    channels: int = 25,
) -> list[Lead]:
    """`n` leads of `resellers`, due evenly over `spread_s` from `start_in_s` on; four
    numbers with plenty of channels, so that the real path claims each lead when due."""
    now = dt.datetime.now(dt.UTC)
    leads: list[tuple[Lead, str]] = []
    script: dict[str, list[str]] = {}
    for i in range(n):
        phone = f"+1{tag}5{i:06d}"
        outcomes, status, attempts = scripts[i % len(scripts)]
        script[phone] = outcomes
        due = now + dt.timedelta(seconds=start_in_s + spread_s * i / max(n - 1, 1))
        leads.append(((phone, resellers[i % len(resellers)], status, attempts), due.isoformat()))
    with system.sim() as sim:
        # Calls outlast the ZSET promoter's 200 ms tick, as real calls do: a call ended
        # before that tick is the seed's own ZREM racing its promoter (cancel_race).
        # Only final callbacks (what a Twilio subscription to `completed` sends): the
        # two paths are compared here, not the webhook's progress handling.
        config = {"ring_ms": [250, 400], "talk_ms": [100, 300], "seed": 3, "progress": False}
        sim.put("/sim/config", json=config).raise_for_status()
        sim.put("/sim/script", json=script).raise_for_status()
    with system.admin() as api:
        api.put("/v1/templates/e2e", json=TEMPLATE).raise_for_status()
        for k in range(4):
            body = {"e164": f"+1202{tag}{k:04d}", "provider": "simulator", "max_channels": channels}
            api.post("/v1/numbers", json=body).raise_for_status()
        for reseller in resellers:
            mine = [(lead, due) for lead, due in leads if lead[1] == reseller]
            for part in chunks(mine, 1000):
                body = {
                    "leads": [
                        {"phone": p, "template": "e2e", "reseller_id": r, "not_before": due}
                        for (p, r, _, _), due in part
                    ]
                }
                resp = api.post("/v1/leads/bulk", json=body)
                resp.raise_for_status()
                assert resp.json()["created"] == len(part)
    return [lead for lead, _ in leads]


def wait_final(leads: list[Lead], database_url: str, timeout_s: float) -> None:
    """Until every one of `leads` (not of the module's other tests) is final."""
    phones = [p for p, *_ in leads]

    def done() -> bool:
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM leads WHERE phone = ANY(%s) AND status IN"
                " ('COMPLETED', 'FAILED', 'EXPIRED', 'SKIPPED', 'CANCELLED')",
                (phones,),
            ).fetchone()
        return row is not None and row[0] == len(phones)

    wait_until(done, timeout_s, what=f"{len(phones)} leads final")


def assert_real_path_intact(system: System, database_url: str, leads: list[Lead]) -> None:
    results = lead_results(database_url)
    wrong = {p: results[p] for p, _, status, n in leads if results[p][:2] != (status, n)}
    assert wrong == {}
    with system.sim() as sim:
        stats = sim.get("/sim/stats").json()
    assert stats["duplicate_dials"] == 0
    assert stats["channel_violations"] == 0


def report(database_url: str, since: dt.datetime, reseller: str | None = None) -> dict[str, Any]:
    with psycopg.connect(database_url) as conn:
        return build_report(conn, since=since, reseller=reseller)


def sql_counts(database_url: str, since: dt.datetime) -> dict[str, int]:
    """The report's three counts straight from the observations: first observation per
    (path, lead, attempt), keys seen by both paths or by one."""
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        row = conn.execute(
            """
            WITH k AS (
                SELECT lead_id, attempt_no, bool_or(path = 'pg') AS pg,
                       bool_or(path = 'zset') AS zset
                FROM parity_observations WHERE observed_at >= %s GROUP BY 1, 2
            )
            SELECT count(*) FILTER (WHERE pg AND zset) AS both,
                   count(*) FILTER (WHERE pg AND NOT zset) AS pg_only,
                   count(*) FILTER (WHERE zset AND NOT pg) AS zset_only
            FROM k
            """,
            (since,),
        ).fetchone()
    assert row is not None
    return dict(row)


def shadow_events(database_url: str, since: dt.datetime) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT * FROM shadow_events WHERE at >= %s ORDER BY at, id", (since,)
        ).fetchall()


def explain(database_url: str, got: dict[str, Any], classes: tuple[str, ...]) -> str:
    """Each divergence of `classes` with its lead's history (lead events, call attempts,
    observations) and the shadow events around it: what a failing fault test prints, so
    that an unexplained divergence can be explained (or its bug found) from the output."""
    wanted = [d for d in got["divergences"] if d["class"] in classes]
    lines: list[str] = []
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        for d in wanted[:20]:
            lead = d["lead_id"]
            lines.append(f"--- {d}")
            for sql, what in (
                ("SELECT created_at FROM leads WHERE id = %s", "lead"),
                (
                    "SELECT at, from_status, to_status, reason FROM lead_events"
                    " WHERE lead_id = %s ORDER BY at, id",
                    "event",
                ),
                (
                    "SELECT attempt_no, due_at, started_at, ended_at, outcome FROM call_attempts"
                    " WHERE lead_id = %s ORDER BY attempt_no",
                    "attempt",
                ),
                (
                    "SELECT path, attempt_no, due_at, observed_at FROM parity_observations"
                    " WHERE lead_id = %s ORDER BY observed_at",
                    "obs",
                ),
                (
                    "SELECT at, kind, detail FROM shadow_events WHERE lead_id = %s"
                    " OR (lead_id IS NULL AND kind NOT IN ('redis_error')) ORDER BY at",
                    "shadow",
                ),
            ):
                for row in conn.execute(sql, (lead,)).fetchall():  # type: ignore[arg-type]
                    lines.append(f"  {what}: {row}")
    return "\n".join(lines)


@pytest.fixture()
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shadow-logs")


@pytest.fixture()
def system(database_url: str, redis_url: str, log_dir: Path) -> Iterator[System]:
    sys_ = start_system(database_url, redis_url, log_dir)
    try:
        yield sys_
    finally:
        sys_.stop_all()


# --- parity on 5,000 leads ----------------------------------------------------------------

N_LEADS = 5000
SPREAD_S = 80.0


def test_parity_of_5000_leads_with_retries(system: System, database_url: str) -> None:
    since = dt.datetime.now(dt.UTC)
    assert "shadow on for every reseller" in shadow_cli(system, "on")
    assert "global: on" in shadow_cli(system, "status")
    started = time.monotonic()
    leads = post_leads(system, "415", ("pa", "pb", "pc"), N_LEADS, 3.0, SPREAD_S, channels=100)
    wait_final(leads, database_url, timeout_s=SPREAD_S + 90)
    time.sleep(1.0)  # the last observations' flush (every 200 ms)
    wall = time.monotonic() - started

    got = report(database_url, since)
    counts = sql_counts(database_url, since)
    attempts = sum(n for *_, n in leads)
    print(
        f"\nparity: {got['parity_pct']:.3f}% both={got['both']} pg_only={got['pg_only']}"
        f" zset_only={got['zset_only']} skew_ms={got['skew_ms']} classes={got['classes']}"
        f" attempts={attempts} wall={wall:.1f}s"
    )
    assert {k: got[k] for k in ("both", "pg_only", "zset_only")} == counts
    assert counts["both"] + counts["pg_only"] == attempts  # one real claim per attempt
    assert got["parity_pct"] >= 99.9
    assert got["skew_ms"]["p99"] <= 300
    # ... and no tail the other way: PostgreSQL claimed on time (a pair more than the
    # report's threshold apart is a divergence).
    assert len(got["divergences"]) <= attempts * 0.001, got["classes"]
    assert_real_path_intact(system, database_url, leads)


# --- faults -------------------------------------------------------------------------------


def test_flushall_heals_by_the_backlog_reconciler(
    database_url: str, log_dir: Path, tmp_path: Path
) -> None:
    with private_redis(tmp_path / "redis") as url:
        system = start_system(
            database_url, url, log_dir, shadow_backlog_reconcile_s=3.0, shadow_reap_s=3.0
        )
        try:
            since = dt.datetime.now(dt.UTC)
            shadow_cli(system, "on", "--reseller", "fa")
            shadow_cli(system, "on", "--reseller", "fb")
            leads = post_leads(system, "510", ("fa", "fb"), 300, 2.0, 16.0)
            time.sleep(8.0)
            flushed_at = dt.datetime.now(dt.UTC)
            redis.Redis.from_url(url).flushall()
            wait_final(leads, database_url, timeout_s=90)
            time.sleep(4.0)  # one more reconcile pass, then the flush
            got = {r: report(database_url, since, r) for r in ("fa", "fb")}
            events = shadow_events(database_url, since)
            why = "\n".join(
                explain(database_url, r, ("other", "retry_not_mirrored")) for r in got.values()
            )
            assert_real_path_intact(system, database_url, leads)
        finally:
            system.stop_all()
    flushes = [e for e in events if e["kind"] == "redis_flushed"]
    assert len(flushes) == 1 and flushes[0]["at"] >= flushed_at
    readded = [e for e in events if e["kind"] == "reconcile_readded" and e["at"] > flushed_at]
    assert readded, "the reconciler re-added the members the flush lost"
    heal_s = (readded[-1]["at"] - flushes[0]["at"]).total_seconds()
    classes: dict[str, int] = {}
    for r in got.values():
        for k, v in r["classes"].items():
            classes[k] = classes.get(k, 0) + v
    print(
        f"\nflush: detected {(flushes[0]['at'] - flushed_at).total_seconds():.2f}s after,"
        f" healed {heal_s:.2f}s after detection, re-added {len(readded)},"
        f" parity {[r['parity_pct'] for r in got.values()]} classes={classes}"
    )
    assert heal_s <= 3.0 + 2.0  # within a reconcile interval (+ its own run)
    assert classes.get("redis_flushed", 0) > 0
    assert set(classes) == {"redis_flushed"}, why


def test_killed_promoter_leader_is_replaced_within_the_lock_ttl(
    database_url: str, redis_url: str, log_dir: Path
) -> None:
    system = start_system(database_url, redis_url, log_dir, schedulers=2)
    try:
        since = dt.datetime.now(dt.UTC)
        shadow_cli(system, "on", "--reseller", "ka")
        leads = post_leads(system, "628", ("ka",), 200, 2.0, 14.0)
        client = redis.Redis.from_url(redis_url)
        lock = f"{system.settings.shadow_prefix}promoter:lock"
        wait_until(lambda: client.get(lock) is not None, 10, 0.1, "a promoter leader")
        time.sleep(4.0)
        holder = client.get(lock)
        assert holder is not None
        pid = int(holder.decode().split(":")[1])
        name = next(n for n, p in system.procs.items() if p.pid == pid)
        assert name.startswith("scheduler")
        killed_at = dt.datetime.now(dt.UTC)
        system.kill(name, signal.SIGKILL)
        wait_until(lambda: client.get(lock) not in (None, holder), 10, 0.05, "the other scheduler")
        took_s = (dt.datetime.now(dt.UTC) - killed_at).total_seconds()
        client.close()
        wait_final(leads, database_url, timeout_s=90)
        time.sleep(1.0)
        got = report(database_url, since, "ka")
        events = shadow_events(database_url, since)
        why = explain(database_url, got, ("other", "retry_not_mirrored"))
        assert_real_path_intact(system, database_url, leads)
    finally:
        system.stop_all()
    ttl_s = system.settings.shadow_lock_ttl_s
    acquired = [
        e
        for e in events
        if e["kind"] == "promoter_acquired" and e["detail"]["holder"] != holder.decode()
    ]
    assert acquired, "the survivor reported its takeover"
    gap_ms = acquired[-1]["detail"]["gap_ms"]
    print(
        f"\nleader killed: takeover after {took_s:.2f}s, gap_ms={gap_ms},"
        f" parity {got['parity_pct']:.2f}% classes={got['classes']}"
    )
    assert took_s <= ttl_s + 0.5
    assert gap_ms is not None and 0 < gap_ms <= ttl_s * 1000 + 500
    assert set(got["classes"]) <= {"promoter_down"}, why


def test_a_failed_dual_write_is_counted_and_classified(
    system: System, database_url: str, redis_url: str
) -> None:
    since = dt.datetime.now(dt.UTC)
    shadow_cli(system, "on", "--reseller", "dw")
    client = redis.Redis.from_url(redis_url)
    attempts_key = f"{system.settings.shadow_prefix}attempts"
    client.set(attempts_key, "not a hash")  # every HSET beside the ZADD now fails
    answered = ((["answered"], "COMPLETED", 1),)
    broken = post_leads(system, "737", ("dw",), 20, 2.0, 1.0, answered)
    client.delete(attempts_key)
    fine = post_leads(system, "738", ("dw",), 20, 2.0, 1.0, answered)
    client.close()
    wait_final(broken + fine, database_url, timeout_s=60)
    time.sleep(1.0)
    got = report(database_url, since, "dw")
    events = shadow_events(database_url, since)
    assert_real_path_intact(system, database_url, broken + fine)
    failed = [e for e in events if e["kind"] == "dual_write_failed"]
    print(f"\ndual writes failed: {len(failed)}, classes={got['classes']}")
    assert len(failed) == 20
    assert {e["detail"]["op"] for e in failed} == {"zadd"}
    assert {e["detail"]["error"] for e in failed} == {"response"}
    assert got["pg_only"] == 20 and got["both"] == 20
    assert got["classes"] == {"dual_write_failed": 20}
