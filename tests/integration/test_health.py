"""`GET /health` on real PostgreSQL and Redis: 200 with every check when the scheduler and
a worker beat and nothing waits too long; 503 naming what failed: Redis gone (an
embedded Valkey of this test, stopped), a stale scheduler or worker heartbeat, a lead
due for over an hour. And the heartbeats' writers: the scheduler loop and the worker
middleware beat while they run and remove their beat when they stop."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from litestar.testing import TestClient
from prometheus_client import REGISTRY

from dispatcher import heartbeat, scheduler
from dispatcher.embedded import EmbeddedValkey
from dispatcher.heartbeat import Heartbeats, WorkerHeartbeat
from dispatcher.runtime import Runtime
from dispatcher.settings import Settings
from web.app import create_app

CHECKS = {"postgres", "redis", "scheduler", "workers", "due_backlog"}


@pytest.fixture(scope="module")
def runtime(database_url: str, redis_url: str) -> Iterator[Runtime]:
    settings = Settings.load({}, database_url=database_url, redis_url=redis_url)
    rt = Runtime.open(settings, providers={})
    yield rt
    rt.close()


@pytest.fixture
def beats(runtime: Runtime) -> Iterator[Heartbeats]:
    """Heartbeats under the runtime's prefix; no beats, leads or pauses left over."""
    beats = Heartbeats(runtime.redis, runtime.settings.redis_prefix)
    with runtime.pool.connection() as conn:
        conn.execute("DELETE FROM leads")
        conn.execute("DELETE FROM controls")
    runtime.redis.delete(*(beats.key(kind) for kind in heartbeat.KINDS))
    yield beats


def health(rt: Runtime) -> tuple[int, dict[str, Any]]:
    with TestClient(create_app(rt)) as client:
        r = client.get("/health")
    body = r.json()
    assert set(body["checks"]) == CHECKS
    assert body["status"] == ("ok" if r.status_code == 200 else "fail")
    return r.status_code, body


def failing(body: dict[str, Any]) -> list[str]:
    return sorted(k for k, v in body["checks"].items() if v.startswith("fail"))


def beat_all(beats: Heartbeats) -> None:
    beats.beat(heartbeat.SCHEDULER, "host:1")
    beats.beat(heartbeat.WORKER, "host:2")


def beat_aged(beats: Heartbeats, client: redis.Redis, kind: str, who: str, age_s: float) -> None:
    """A beat written `age_s` ago by the Redis server's clock (what a dead process left)."""
    seconds, micros = client.time()
    client.zadd(beats.key(kind), {who: seconds + micros / 1e6 - age_s})


def add_due_lead(rt: Runtime, due_s_ago: float) -> None:
    with rt.pool.connection() as conn:
        conn.execute(
            "INSERT INTO leads (reseller_id, phone, template, status, next_attempt_at)"
            " VALUES ('r1', '+14155550100', 'default', 'BACKLOG',"
            " now() - make_interval(secs => %s))",
            (due_s_ago,),
        )


def test_200_with_every_check_when_all_is_well(runtime: Runtime, beats: Heartbeats) -> None:
    beat_all(beats)
    add_due_lead(runtime, due_s_ago=-60)  # not due yet: nothing is late
    status, body = health(runtime)
    assert status == 200
    assert body["checks"] == dict.fromkeys(CHECKS, "ok")
    details = body["details"]
    assert details["workers_alive"] == 1
    assert 0 <= details["scheduler_heartbeat_age_s"] < 5
    assert details["oldest_due_age_s"] == 0.0 and details["paused"] is False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def own_valkey(port: int, data_dir: Path) -> Iterator[str]:
    server = EmbeddedValkey(data_dir, port=port)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


def test_503_naming_redis_while_it_is_down_and_200_once_it_is_back(runtime: Runtime) -> None:
    port, data_dir = _free_port(), Path(tempfile.mkdtemp(prefix="sb-health-valkey-"))
    try:
        with own_valkey(port, data_dir) as url:
            settings = dataclasses.replace(runtime.settings, redis_url=url)
            own = Runtime(settings, runtime.pool, redis.Redis.from_url(url), runtime.channels, {})
            own_beats = Heartbeats(own.redis, settings.redis_prefix)
            beat_all(own_beats)
            assert health(own)[0] == 200
        # Stopped: the same runtime now talks to a closed port.
        started = time.monotonic()
        status, body = health(own)
        assert time.monotonic() - started < 5, "a dead Redis must not hang the probe"
        assert status == 503
        assert failing(body) == ["redis", "scheduler", "workers"]
        assert body["checks"]["redis"].startswith("fail: ConnectionError")
        assert body["checks"]["scheduler"] == "fail: unknown, Redis did not answer"
        assert body["checks"]["postgres"] == "ok"
        with own_valkey(port, data_dir):
            beat_all(own_beats)
            assert health(own)[0] == 200
        own.redis.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_503_naming_the_scheduler_when_its_heartbeat_is_stale(
    runtime: Runtime, beats: Heartbeats
) -> None:
    beats.beat(heartbeat.WORKER, "host:2")
    beat_aged(beats, runtime.redis, heartbeat.SCHEDULER, "host:1", age_s=60)
    status, body = health(runtime)
    assert status == 503
    assert failing(body) == ["scheduler"]
    assert body["checks"]["scheduler"].startswith("fail: last heartbeat 60.")
    assert body["checks"]["scheduler"].endswith("(limit 10s)")
    assert body["details"]["scheduler_heartbeat_age_s"] >= 60

    beats.beat(heartbeat.SCHEDULER, "host:1")  # the scheduler is back
    status, body = health(runtime)
    assert status == 200 and failing(body) == []


def test_503_naming_the_workers_when_too_few_beat(runtime: Runtime, beats: Heartbeats) -> None:
    beats.beat(heartbeat.SCHEDULER, "host:1")
    status, body = health(runtime)
    assert (status, failing(body)) == (503, ["workers"])
    assert body["checks"]["workers"] == "fail: 0 worker process(es) beat in the last 10s, need 1"

    beat_aged(beats, runtime.redis, heartbeat.WORKER, "host:2", age_s=30)  # a dead worker
    beats.beat(heartbeat.WORKER, "host:3")
    status, body = health(runtime)
    assert (status, body["details"]["workers_alive"]) == (200, 1)

    two = dataclasses.replace(runtime.settings, health_min_workers=2)
    status, body = health(dataclasses.replace(runtime, settings=two))
    assert (status, failing(body)) == (503, ["workers"])


def test_due_backlog_warns_past_5_minutes_and_fails_past_an_hour_unless_paused(
    runtime: Runtime, beats: Heartbeats
) -> None:
    beat_all(beats)
    add_due_lead(runtime, due_s_ago=400)
    status, body = health(runtime)
    assert status == 200
    assert body["checks"]["due_backlog"].startswith("warn: the oldest due lead has waited 40")
    assert 400 <= body["details"]["oldest_due_age_s"] < 410

    add_due_lead(runtime, due_s_ago=4000)
    status, body = health(runtime)
    assert (status, failing(body)) == (503, ["due_backlog"])
    assert body["checks"]["due_backlog"].endswith("(limit 3600s)")

    with runtime.pool.connection() as conn:  # a pause in force: waiting is expected
        conn.execute(
            "INSERT INTO controls (scope, scope_id, paused) VALUES ('reseller', 'r1', true)"
        )
    status, body = health(runtime)
    assert status == 200
    assert body["checks"]["due_backlog"].endswith("a pause is in force")
    assert body["details"]["paused"] is True


def test_the_scheduler_loop_beats_while_it_runs_and_forgets_when_stopped(
    runtime: Runtime, beats: Heartbeats
) -> None:
    stop = threading.Event()
    loop = threading.Thread(target=scheduler.run, args=(runtime, lambda claimed: None, stop))
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while beats.read(fresh_s=5)[heartbeat.SCHEDULER].alive != 1:
            assert time.monotonic() < deadline, "no scheduler heartbeat"
            time.sleep(0.05)
        last_pass = REGISTRY.get_sample_value("switchboard_scheduler_heartbeat_timestamp_seconds")
        assert last_pass is not None and time.time() - last_pass < 5
    finally:
        stop.set()
        loop.join(timeout=10)
    assert not loop.is_alive()
    assert beats.read(fresh_s=5)[heartbeat.SCHEDULER] == heartbeat.Seen(None, 0)


def test_a_worker_beats_while_booted_and_forgets_on_shutdown(
    runtime: Runtime, beats: Heartbeats
) -> None:
    settings = dataclasses.replace(runtime.settings, worker_heartbeat_s=0.05)
    broker = StubBroker()
    broker.add_middleware(WorkerHeartbeat(settings))
    worker = Worker(broker, worker_threads=1)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while beats.read(fresh_s=1)[heartbeat.WORKER].alive != 1:
            assert time.monotonic() < deadline, "no worker heartbeat"
            time.sleep(0.05)
        first = beats.read(fresh_s=1)[heartbeat.WORKER].age_s
        time.sleep(0.3)
        again = beats.read(fresh_s=1)[heartbeat.WORKER].age_s
        assert first is not None and again is not None and again < 0.3, "it keeps beating"
    finally:
        worker.stop()
        broker.close()
    assert beats.read(fresh_s=1)[heartbeat.WORKER] == heartbeat.Seen(None, 0)
