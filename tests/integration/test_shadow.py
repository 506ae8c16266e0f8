"""The shadow ZSET schedule on real PostgreSQL and Redis: what each lifecycle change does
to the ZSET layout, flag scoping, observations in batches, Redis errors that stay out of
the real path, and the seed's promoter, consumers and reconcilers in a process."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dispatcher import lifecycle, shadow, shadow_flags, shadow_hook, shadow_store
from dispatcher.lifecycle import NewAttempt, NewLead
from dispatcher.runtime import Runtime
from dispatcher.settings import Settings
from tests.e2e.harness import free_port


@pytest.fixture(scope="module")
def rt(database_url: str, redis_url: str) -> Iterator[Runtime]:
    settings = Settings.load(
        {},
        database_url=database_url,
        redis_url=redis_url,
        shadow_prefix=f"it{uuid.uuid4().hex[:6]}:",
        shadow_promoter_tick_s=0.05,
    )
    runtime = Runtime.open(settings, providers={})
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO outbound_numbers (e164, max_channels) VALUES ('+14155550100', 9)")
        conn.execute(
            "INSERT INTO templates (name, retry, calling_window) VALUES ('shadow', %s, NULL)",
            (Jsonb({"max_attempts": 3, "retry_on": ["busy"], "delay_s": 30, "backoff": "fixed"}),),
        )
    yield runtime
    runtime.close()


@pytest.fixture()
def proc(rt: Runtime) -> shadow.ProcessShadow:
    process = shadow.current()
    assert process is not None and shadow_hook.current() is process.mirror
    return process


@pytest.fixture()
def r(rt: Runtime) -> redis.Redis:
    return rt.redis


@pytest.fixture()
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as c:
        yield c


def flag(database_url: str, scope: str, enabled: bool) -> None:
    with psycopg.connect(database_url) as c:
        shadow_flags.set_flag(c, scope, enabled)


def shadow_on(database_url: str, proc: shadow.ProcessShadow, reseller: str) -> None:
    flag(database_url, reseller, True)
    wait(lambda: proc.flags.applies(reseller), 2.0)


def wait(check: Any, timeout_s: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, "timed out"
        time.sleep(0.01)
    return time.monotonic() - started


def new_lead(reseller: str, due_in_s: float = -1.0) -> NewLead:
    return NewLead(
        reseller_id=reseller,
        phone="+14155550123",
        template="shadow",
        next_attempt_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=due_in_s),
    )


def ms(value: dt.datetime) -> int:
    return int(value.timestamp() * 1000)


def scheduled(r: redis.Redis, proc: shadow.ProcessShadow, lead_id: int) -> tuple[Any, Any]:
    """(ZSET score, attempts hash value) of a lead."""
    return r.zscore(proc.keys.schedule, str(lead_id)), r.hget(proc.keys.attempts, str(lead_id))


def events(conn: psycopg.Connection[Any], kind: str, reseller: str | None = None) -> list[Any]:
    return conn.execute(
        "SELECT * FROM shadow_events WHERE kind = %s"
        " AND (%s::text IS NULL OR reseller_id = %s) ORDER BY id",
        (kind, reseller, reseller),
    ).fetchall()


def test_every_lifecycle_change_is_mirrored(
    database_url: str, proc: shadow.ProcessShadow, r: redis.Redis, conn: psycopg.Connection[Any]
) -> None:
    shadow_on(database_url, proc, "m1")
    # create → ZADD at the due time, attempt 1
    future = new_lead("m1", due_in_s=3600)
    a, b, c = lifecycle.create_leads(conn, [new_lead("m1"), new_lead("m1"), future])
    conn.commit()
    assert a and b and c
    score, attempt = scheduled(r, proc, c)
    assert score == ms(future.next_attempt_at)
    assert attempt == f"1|{ms(future.next_attempt_at)}|m1".encode()
    # claim → a 'pg' observation (attempt 1, its due time); the ZSET keeps the member
    claimed = {x.lead_id: x for x in lifecycle.claim(conn, "m1", 10, lease_s=30)}
    conn.commit()
    assert set(claimed) == {a, b}
    proc.flush()
    obs = conn.execute(
        "SELECT lead_id, attempt_no, reseller_id, due_at FROM parity_observations"
        " WHERE path = 'pg' AND reseller_id = 'm1' ORDER BY lead_id"
    ).fetchall()
    assert [(o["lead_id"], o["attempt_no"]) for o in obs] == [(a, 1), (b, 1)]
    assert obs[0]["due_at"] == claimed[a].due_at
    # defer → ZADD at the new time, same attempt
    until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90)
    assert lifecycle.defer(conn, b, claimed[b].fence, until, "no_free_channel")
    conn.commit()
    assert scheduled(r, proc, b) == (ms(until), f"1|{ms(until)}|m1".encode())
    # dial, busy → retry: ZADD at the retry time with attempt 2
    attempt_a = NewAttempt(uuid.uuid4(), 1, "+14155550100", "simulator")
    assert lifecycle.start_dialing(conn, a, claimed[a].fence, attempt_a)
    ended = lifecycle.end_call(conn, attempt_a.id, "busy")
    conn.commit()
    assert ended is not None and ended.lead_status == "BACKLOG" and ended.next_attempt_at
    retry_ms = ms(ended.next_attempt_at)
    assert scheduled(r, proc, a) == (retry_ms, f"2|{retry_ms}|m1".encode())
    # cancel → ZREM
    assert lifecycle.cancel(conn, c) is not None
    conn.commit()
    assert scheduled(r, proc, c) == (None, None)
    # second attempt answered → COMPLETED → ZREM
    conn.execute("UPDATE leads SET next_attempt_at = now() WHERE id = %s", (a,))
    (again,) = lifecycle.claim(conn, "m1", 1, lease_s=30)
    attempt_a2 = NewAttempt(uuid.uuid4(), 1, "+14155550100", "simulator")
    assert lifecycle.start_dialing(conn, a, again.fence, attempt_a2)
    ended = lifecycle.end_call(conn, attempt_a2.id, "answered")
    conn.commit()
    assert ended is not None and ended.lead_status == "COMPLETED"
    assert scheduled(r, proc, a) == (None, None)
    proc.flush()
    second = conn.execute(
        "SELECT attempt_no FROM parity_observations WHERE path = 'pg' AND lead_id = %s ORDER BY id",
        (a,),
    ).fetchall()
    assert [o["attempt_no"] for o in second] == [1, 2]


def test_flags_scope_globally_and_per_reseller_within_a_second(
    database_url: str, proc: shadow.ProcessShadow, r: redis.Redis, conn: psycopg.Connection[Any]
) -> None:
    (off,) = lifecycle.create_leads(conn, [new_lead("f1")])
    conn.commit()
    assert scheduled(r, proc, off) == (None, None)  # no flag: nothing mirrored

    flag(database_url, "*", True)
    took = wait(lambda: proc.flags.applies("f1") and proc.flags.applies("f2"), 1.0)
    assert took < 1.0
    flag(database_url, "f2", False)  # a reseller's own row beats the global one
    took = wait(lambda: not proc.flags.applies("f2"), 1.0)
    assert took < 1.0
    one, two = lifecycle.create_leads(conn, [new_lead("f1"), new_lead("f2")])
    conn.commit()
    assert scheduled(r, proc, one)[0] is not None
    assert scheduled(r, proc, two) == (None, None)

    flag(database_url, "*", False)
    wait(lambda: not proc.flags.applies("f1"), 1.0)
    (three,) = lifecycle.create_leads(conn, [new_lead("f1")])
    conn.commit()
    assert scheduled(r, proc, three) == (None, None)
    # A reload without a NOTIFY (someone edited the table by hand) is periodic.
    conn.execute("UPDATE shadow_flags SET enabled = true WHERE scope = 'f2'")
    conn.commit()
    took = wait(lambda: proc.flags.applies("f2"), 1.5)
    assert took <= 1.3


def test_a_redis_error_never_reaches_the_real_path(
    database_url: str, proc: shadow.ProcessShadow, r: redis.Redis, conn: psycopg.Connection[Any]
) -> None:
    shadow_on(database_url, proc, "e1")
    dead = shadow.redis_client(f"redis://127.0.0.1:{free_port()}/0", 0.5)
    broken = shadow.Mirror(dead, proc.keys, proc.flags, proc.recorder)
    shadow_hook.install(broken)
    try:
        started = time.monotonic()
        ids = lifecycle.create_leads(conn, [new_lead("e1"), new_lead("e1")])
        conn.commit()
        (lead,) = lifecycle.create_leads(conn, [new_lead("e1")])  # the breaker is open now
        assert lifecycle.cancel(conn, lead) is not None
        conn.commit()
        assert time.monotonic() - started < 2.0
    finally:
        shadow_hook.install(proc.mirror)
        dead.close()
    rows = conn.execute("SELECT status FROM leads WHERE id = ANY(%s)", ([*ids, lead],)).fetchall()
    assert sorted(x["status"] for x in rows) == ["BACKLOG", "BACKLOG", "CANCELLED"]
    proc.flush()
    failed = events(conn, shadow_store.DUAL_WRITE_FAILED, "e1")
    assert [(e["lead_id"], e["detail"]["op"]) for e in failed] == [
        (ids[0], "zadd"),
        (ids[1], "zadd"),
        (lead, "zadd"),
        (lead, "zrem"),
    ]
    assert failed[0]["detail"]["error"] == "connection"
    assert failed[2]["detail"]["error"] == "circuit_open"
    assert all(scheduled(r, proc, i) == (None, None) for i in ids)


def test_observations_are_written_in_batches_by_the_flusher(
    database_url: str, proc: shadow.ProcessShadow, conn: psycopg.Connection[Any]
) -> None:
    shadow_on(database_url, proc, "b1")
    ids = lifecycle.create_leads(conn, [new_lead("b1") for _ in range(500)])
    conn.commit()
    for _ in range(5):
        lifecycle.claim(conn, "b1", 100, lease_s=30)
        conn.commit()

    def written() -> int:
        row = conn.execute(
            "SELECT count(*) AS n, count(DISTINCT xmin::text) AS txs FROM parity_observations"
            " WHERE reseller_id = 'b1'"
        ).fetchone()
        conn.commit()
        assert row is not None
        return int(row["n"])

    wait(lambda: written() == 500, 2.0)  # no explicit flush: the thread's 200 ms cadence
    row = conn.execute(
        "SELECT count(DISTINCT xmin::text) AS txs, count(DISTINCT lead_id) AS leads"
        " FROM parity_observations WHERE reseller_id = 'b1'"
    ).fetchone()
    assert row is not None and row["leads"] == len(ids)
    assert row["txs"] <= 3  # 500 rows in a few COPY transactions, not 500 inserts


@pytest.fixture()
def sched(rt: Runtime, proc: shadow.ProcessShadow) -> Iterator[shadow.SchedulerShadow]:
    settings = dataclasses.replace(rt.settings, shadow_stuck_s=0.3)
    s = shadow.SchedulerShadow(settings, rt.pool, proc)
    yield s
    s.stop()


def test_promoter_and_consumers_record_would_dispatch(
    database_url: str,
    proc: shadow.ProcessShadow,
    sched: shadow.SchedulerShadow,
    conn: psycopg.Connection[Any],
) -> None:
    shadow_on(database_url, proc, "p1")
    sched.start()
    leads = [new_lead("p1", due_in_s=0.5) for _ in range(20)]
    ids = lifecycle.create_leads(conn, leads)
    conn.commit()

    def observed() -> list[dict[str, Any]]:
        proc.flush()  # earlier tests' leftovers may be consumed first: wait for these
        rows = conn.execute(
            "SELECT lead_id, attempt_no, due_at, observed_at FROM parity_observations"
            " WHERE path = 'zset' AND reseller_id = 'p1'"
        ).fetchall()
        conn.commit()
        return rows

    wait(lambda: len(observed()) >= 20, 5.0)
    obs = observed()
    assert sorted(o["lead_id"] for o in obs) == sorted(ids)
    assert all(o["attempt_no"] == 1 for o in obs)
    due = leads[0].next_attempt_at
    for o in obs:
        assert abs((o["due_at"] - due).total_seconds()) < 0.001  # the score is whole ms
        # promoted at a tick after the due time: within the tick and the BLPOP hop
        lag_s = (o["observed_at"] - o["due_at"]).total_seconds()
        assert 0 <= lag_s < 1.0, lag_s  # 50 ms ticks; slack for a loaded 2-core host
    acquired = events(conn, shadow_store.PROMOTER_ACQUIRED)
    assert acquired and acquired[-1]["detail"]["holder"] == sched.holder


def test_backlog_reconciler_readds_what_the_zset_lost(
    database_url: str,
    proc: shadow.ProcessShadow,
    sched: shadow.SchedulerShadow,
    r: redis.Redis,
    conn: psycopg.Connection[Any],
) -> None:
    shadow_on(database_url, proc, "c1")
    later = new_lead("c1", due_in_s=3600)
    lost, kept, popped = lifecycle.create_leads(conn, [later, later, later])
    conn.commit()
    r.zrem(proc.keys.schedule, str(lost))  # e.g. a flush, or a dual write that failed
    r.zrem(proc.keys.schedule, str(popped))
    r.hset(proc.keys.dispatched, str(popped), 1)  # popped by a consumer: not lost

    # (other tests' shadowed leads whose dual write failed are re-added too)
    assert sched.reconcile_backlog() >= 1

    score = r.zscore(proc.keys.schedule, str(lost))
    due = ms(later.next_attempt_at)
    assert score is not None and due <= score <= due + 2000  # its due time + jitter
    assert r.zscore(proc.keys.schedule, str(kept)) == due
    assert r.zscore(proc.keys.schedule, str(popped)) is None
    proc.flush()
    readded = events(conn, shadow_store.RECONCILE_READDED, "c1")
    assert [(e["lead_id"], e["detail"]["attempt_no"]) for e in readded] == [(lost, 1)]
    assert sched.reconcile_backlog() == 0  # healed: nothing more to do


def test_reaper_rescues_ids_stuck_on_a_dead_consumers_list(
    database_url: str,
    proc: shadow.ProcessShadow,
    sched: shadow.SchedulerShadow,
    r: redis.Redis,
    conn: psycopg.Connection[Any],
) -> None:
    shadow_on(database_url, proc, "s1")
    waiting, finished = lifecycle.create_leads(conn, [new_lead("s1", 3600), new_lead("s1")])
    assert lifecycle.cancel(conn, finished) is not None
    conn.commit()
    r.zrem(proc.keys.schedule, str(waiting))
    dead = proc.keys.processing("dead-worker")
    r.rpush(dead, str(waiting), str(finished))

    assert sched.reap_stuck() == 0  # first seen now; not stuck yet
    time.sleep(0.35)
    assert sched.reap_stuck() == 2

    assert r.llen(dead) == 0
    assert r.zscore(proc.keys.schedule, str(waiting)) is not None  # BACKLOG: scheduled again
    assert r.zscore(proc.keys.schedule, str(finished)) is None  # cancelled: only removed
    proc.flush()
    reaped = events(conn, shadow_store.REAPED, "s1")
    assert {(e["lead_id"], e["detail"]["readded"]) for e in reaped} == {
        (waiting, True),
        (finished, False),
    }


def test_a_lost_sentinel_reports_a_flush_once(
    database_url: str,
    proc: shadow.ProcessShadow,
    sched: shadow.SchedulerShadow,
    r: redis.Redis,
    conn: psycopg.Connection[Any],
) -> None:
    shadow_on(database_url, proc, "z1")
    assert not sched.check_sentinel()  # writes it
    assert not sched.check_sentinel()
    r.delete(proc.keys.sentinel)
    assert sched.check_sentinel()
    assert not sched.check_sentinel()
    proc.flush()
    flushed = events(conn, shadow_store.REDIS_FLUSHED)
    assert [e["detail"]["detected_by"] for e in flushed] == [sched.holder]


def test_retention_prunes_old_rows(
    database_url: str, sched: shadow.SchedulerShadow, conn: psycopg.Connection[Any]
) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=8)
    conn.execute(
        "INSERT INTO parity_observations (path, lead_id, attempt_no, reseller_id, observed_at)"
        " VALUES ('pg', -1, 1, 'old', %s), ('pg', -2, 1, 'old', now())",
        (old,),
    )
    conn.execute("INSERT INTO shadow_events (at, kind) VALUES (%s, 'reaped')", (old,))
    conn.commit()
    assert sched.prune() == 2
    left = conn.execute(
        "SELECT lead_id FROM parity_observations WHERE reseller_id = 'old'"
    ).fetchall()
    assert [x["lead_id"] for x in left] == [-2]
