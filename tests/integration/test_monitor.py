"""The health monitor on real PostgreSQL and Redis: facts from the database and the
heartbeats, one voice alert and one webhook POST per start, a POST per recovery, and the
Redis active set keeping several (or restarted) schedulers from alerting twice."""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from dispatcher import heartbeat, monitor
from dispatcher.heartbeat import Heartbeats
from dispatcher.monitor import DUE_BACKLOG, FIRING, NO_WORKERS, RECOVERED, STUCK_CALLS
from dispatcher.runtime import Runtime

BACKLOG_LIMIT = 5


class Receiver:
    """A local webhook endpoint recording every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def with_settings(rt: Runtime, **changes: Any) -> Runtime:
    """The same connections under other monitor settings (Settings is frozen)."""
    return dataclasses.replace(rt, settings=dataclasses.replace(rt.settings, **changes))


@pytest.fixture()
def rt(runtime: Runtime, receiver: Receiver) -> Iterator[Runtime]:
    """A clean database and active set, a live worker heartbeat, a small backlog limit."""
    with runtime.pool.connection() as conn:
        conn.execute("TRUNCATE leads, call_attempts, lead_events, controls CASCADE")
    runtime.redis.delete(f"{runtime.settings.redis_prefix}:monitor:active")
    receiver.bodies.clear()
    beats = Heartbeats(runtime.redis, runtime.settings.redis_prefix)
    beats.beat(heartbeat.WORKER, "test-worker:1")
    yield with_settings(
        runtime, monitor_due_backlog=BACKLOG_LIMIT, monitor_webhook_url=receiver.url
    )
    beats.forget(heartbeat.WORKER, "test-worker:1")


def due_leads(rt: Runtime, n: int, reseller: str = "r1") -> None:
    with rt.pool.connection() as conn:
        conn.execute(
            "INSERT INTO leads (reseller_id, phone, template, status, next_attempt_at)"
            " SELECT %s, '+14155550100', 'default', 'BACKLOG', now() - interval '1 second'"
            " FROM generate_series(1, %s)",
            (reseller, n),
        )


def finish_leads(rt: Runtime) -> None:
    with rt.pool.connection() as conn:
        conn.execute("UPDATE leads SET status = 'COMPLETED' WHERE status = 'BACKLOG'")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, condition: str, message: str) -> None:
        with self._lock:
            self.calls.append((condition, message))


def test_the_backlog_alerts_once_recovers_and_alerts_again(rt: Runtime, receiver: Receiver) -> None:
    fire, notify = Recorder(), monitor.webhook_notifier(rt.settings)
    due_leads(rt, BACKLOG_LIMIT + 1)

    first = monitor.step(rt, fire, notify)

    assert [(t.condition, t.state) for t in first] == [(DUE_BACKLOG, FIRING)]
    assert fire.calls == [(DUE_BACKLOG, "Switchboard alert: 6 leads are due, over the limit of 5.")]
    assert receiver.bodies == [
        {
            "text": "Switchboard alert: 6 leads are due, over the limit of 5.",
            "condition": DUE_BACKLOG,
            "state": "firing",
            "details": {"due_leads": 6, "limit": 5, "voice_alert": "sent"},
        }
    ]
    assert rt.redis.smembers(f"{rt.settings.redis_prefix}:monitor:active") == {b"due_backlog"}

    due_leads(rt, 10)  # still over, further over: no second alert
    assert monitor.step(rt, fire, notify) == []
    assert len(fire.calls) == 1 and len(receiver.bodies) == 1

    finish_leads(rt)
    recovered = monitor.step(rt, fire, notify)

    assert [(t.condition, t.state) for t in recovered] == [(DUE_BACKLOG, RECOVERED)]
    assert len(fire.calls) == 1  # a recovery calls nobody
    assert [(b["condition"], b["state"], b["details"]["due_leads"]) for b in receiver.bodies] == [
        (DUE_BACKLOG, "firing", 6),
        (DUE_BACKLOG, "recovered", 0),
    ]
    assert receiver.bodies[1]["text"].startswith("Switchboard recovered:")
    assert monitor.step(rt, fire, notify) == []

    due_leads(rt, BACKLOG_LIMIT + 2)
    monitor.step(rt, fire, notify)

    assert [c for c, _ in fire.calls] == [DUE_BACKLOG, DUE_BACKLOG]
    assert "7 leads are due" in fire.calls[1][1]
    assert [b["state"] for b in receiver.bodies] == ["firing", "recovered", "firing"]


def test_two_schedulers_at_once_alert_once(runtime: Runtime, rt: Runtime) -> None:
    """Two schedulers, each with its own connection pool, step at the same moment."""
    other = Runtime.open(rt.settings, providers={})
    fire = Recorder()
    due_leads(rt, BACKLOG_LIMIT + 1)
    start = threading.Barrier(2)
    results: list[list[monitor.Transition]] = []

    def scheduler(r: Runtime) -> None:
        start.wait(timeout=10)
        results.append(monitor.step(r, fire, None))

    try:
        threads = [threading.Thread(target=scheduler, args=(r,)) for r in (rt, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    finally:
        other.close()

    assert len(results) == 2
    assert [c for c, _ in fire.calls] == [DUE_BACKLOG]
    assert sorted(len(r) for r in results) == [0, 1]


def test_a_restarted_scheduler_does_not_alert_again(rt: Runtime) -> None:
    """The active set lives in Redis, not in the process: a new runtime sees it."""
    due_leads(rt, BACKLOG_LIMIT + 1)
    before, after = Recorder(), Recorder()
    monitor.step(rt, before, None)

    restarted = Runtime.open(rt.settings, providers={})
    try:
        assert monitor.step(restarted, after, None) == []
        finish_leads(rt)
        assert [t.state for t in monitor.step(restarted, after, None)] == [RECOVERED]
    finally:
        restarted.close()

    assert [c for c, _ in before.calls] == [DUE_BACKLOG] and after.calls == []


def test_the_redis_set_lets_exactly_one_contender_take_a_transition(rt: Runtime) -> None:
    active = monitor.RedisActive(rt.redis, rt.settings.redis_prefix)
    won: list[bool] = []
    start = threading.Barrier(8)

    def contend() -> None:
        start.wait(timeout=10)
        won.append(active.add(STUCK_CALLS))

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)

    assert sorted(won) == [False] * 7 + [True]
    assert active.remove(STUCK_CALLS) is True
    assert active.remove(STUCK_CALLS) is False


def test_a_paused_resellers_backlog_does_not_page(rt: Runtime) -> None:
    due_leads(rt, BACKLOG_LIMIT + 1, reseller="paused-one")
    due_leads(rt, 2, reseller="r1")
    with rt.pool.connection() as conn:
        conn.execute(
            "INSERT INTO controls (scope, scope_id, paused) VALUES ('reseller', 'paused-one', true)"
        )
        facts = monitor.gather(rt, conn)

    assert facts.due_leads == 2
    assert monitor.step(rt, Recorder(), None) == []

    with rt.pool.connection() as conn:
        conn.execute("UPDATE controls SET paused = false")
    assert [t.condition for t in monitor.step(rt, Recorder(), None)] == [DUE_BACKLOG]


def test_stuck_calls_and_missing_workers_are_seen(rt: Runtime) -> None:
    short = with_settings(rt, max_call_s=60.0, call_grace_s=10.0, monitor_stuck_margin_s=5.0)
    with short.pool.connection() as conn:
        number = conn.execute(
            "INSERT INTO outbound_numbers (e164, max_channels) VALUES ('+12025550199', 4)"
            " RETURNING id"
        ).fetchone()
        lead = conn.execute(
            "INSERT INTO leads (reseller_id, phone, template, status, next_attempt_at)"
            " VALUES ('r1', '+14155550100', 'default', 'IN_CALL', now()) RETURNING id"
        ).fetchone()
        assert number is not None and lead is not None
        for age_s in (76, 70):  # one past 60 + 10 + 5 seconds, one not yet
            conn.execute(
                "INSERT INTO call_attempts (id, lead_id, attempt_no, reseller_id, phone,"
                " number_id, number, provider, started_at) VALUES (%s, %s, %s, 'r1',"
                " '+14155550100', %s, '+12025550199', 'simulator',"
                " now() - make_interval(secs => %s))",
                (uuid.uuid4(), lead["id"], 100 - age_s, number["id"], age_s),
            )
    Heartbeats(rt.redis, rt.settings.redis_prefix).forget(heartbeat.WORKER, "test-worker:1")
    fire = Recorder()

    got = monitor.step(short, fire, None)

    assert sorted((t.condition, t.details.get("stuck_calls")) for t in got) == [
        (NO_WORKERS, None),
        (STUCK_CALLS, 1),
    ]
    assert sorted(c for c, _ in fire.calls) == [NO_WORKERS, STUCK_CALLS]

    Heartbeats(rt.redis, rt.settings.redis_prefix).beat(heartbeat.WORKER, "test-worker:1")
    assert [(t.condition, t.state) for t in monitor.step(short, fire, None)] == [
        (NO_WORKERS, RECOVERED)
    ]


def test_a_failing_webhook_does_not_stop_the_alert(rt: Runtime) -> None:
    broken = with_settings(rt, monitor_webhook_url="http://127.0.0.1:9/hook")  # refused
    fire = Recorder()
    due_leads(rt, BACKLOG_LIMIT + 1)

    got = monitor.step(broken, fire, monitor.webhook_notifier(broken.settings))

    assert [t.condition for t in got] == [DUE_BACKLOG]
    assert [c for c, _ in fire.calls] == [DUE_BACKLOG]
    finish_leads(rt)
    # The scheduler's entry point, with no group configured: the webhook alone, failing.
    assert [t.state for t in monitor.check_health(broken)] == [RECOVERED]


def test_a_crossing_calls_the_configured_group_through_the_alert_service(rt: Runtime) -> None:
    """The same code path as POST /v1/alerts/fire: an alert row, a timeline, a lead per
    member of the configured group; a second pass while it holds calls nobody new."""
    with rt.pool.connection() as conn:
        conn.execute("DELETE FROM alerts WHERE alert_id LIKE 'switchboard-health:%'")
        conn.execute(
            "INSERT INTO alert_groups (reseller_id, name, members) VALUES"
            ' (\'ops\', \'sre\', \'[{"phone": "+14155557777", "name": "Sam"}]\')'
            " ON CONFLICT (reseller_id, name) DO NOTHING"
        )
    configured = with_settings(rt, monitor_reseller="ops", monitor_group="sre")
    due_leads(rt, BACKLOG_LIMIT + 1)
    first = monitor.check_health(configured)
    second = monitor.check_health(configured)
    assert [t.condition for t in first] == ["due_backlog"] and second == []
    with rt.pool.connection() as conn:
        alerts = conn.execute(
            "SELECT a.status, a.mode, count(l.id) AS leads FROM alerts a"
            " JOIN leads l ON l.alert_ref = a.id"
            " WHERE a.reseller_id = 'ops' AND a.alert_id = 'switchboard-health:due_backlog'"
            " GROUP BY a.id"
        ).fetchall()
        member_lead = conn.execute(
            "SELECT phone, priority, execution_mode FROM leads WHERE alert_ref IS NOT NULL"
        ).fetchone()
    assert [(a["status"], a["leads"]) for a in alerts] == [("calling", 1)]
    assert member_lead == {
        "phone": "+14155557777",
        "priority": 10,
        "execution_mode": "telephony_alert",
    }
