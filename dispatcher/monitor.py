"""The scheduler's health monitor: page someone when dispatch stops working.

Four conditions, thresholds in settings (SWITCHBOARD_MONITOR_*):

- due_backlog: more than `monitor_due_backlog` leads are due;
- oldest_due: the oldest due lead has waited more than `monitor_oldest_due_s`;
- stuck_calls: a call is still open `monitor_stuck_margin_s` past the longest call
  (`max_call_s + call_grace_s`), i.e. the reconciler could not end it;
- no_workers: no worker process beat within `heartbeat_stale_s`.

Leads of a paused reseller, and every lead under the global pause, are left out of the
two backlog conditions: an operator's pause must not wake the on-call at night.

Alerts are edge-triggered: a condition fires once when it becomes true and again only
after it was seen false (a "recovered" transition, which the webhook reports). `Monitor`
is the state machine; where it remembers the active conditions is pluggable: a plain set
for tests, and in production a Redis set (`{prefix}:monitor:active`) whose atomic
SADD/SREM decides who takes a transition, so several schedulers, or a restarted one, never
fire twice. One scheduler evaluates at a time (an advisory lock, as the reconcilers do),
so transitions follow the order in which the facts were read.

The voice alert goes through `dispatcher.alerts` to the configured group
(`monitor_reseller`, `monitor_group`); the optional webhook is Slack-compatible JSON.
Neither may stop the scheduler: failures are logged, and the condition stays active (one
page per edge, not one attempt per tick).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx
import redis
import structlog
from psycopg import Connection

from dispatcher import heartbeat
from dispatcher.heartbeat import Heartbeats
from dispatcher.runtime import Runtime
from dispatcher.settings import Settings

log = structlog.get_logger(__name__)

DUE_BACKLOG = "due_backlog"
OLDEST_DUE = "oldest_due"
STUCK_CALLS = "stuck_calls"
NO_WORKERS = "no_workers"
CONDITIONS = (DUE_BACKLOG, OLDEST_DUE, STUCK_CALLS, NO_WORKERS)

LOCK_MONITOR = 727_004  # advisory lock: one scheduler evaluates health at a time

State = Literal["firing", "recovered"]
FIRING: State = "firing"
RECOVERED: State = "recovered"

Fire = Callable[[str, str], None]  # (condition, message): the voice alert


@dataclass(frozen=True)
class Facts:
    """What one look at PostgreSQL and the heartbeats found."""

    due_leads: int  # due BACKLOG leads of unpaused resellers
    oldest_due_s: float  # how long the oldest of them has been due (0: none)
    stuck_calls: int  # open attempts past the stuck age
    workers_alive: int  # worker processes that beat within heartbeat_stale_s


@dataclass(frozen=True)
class Thresholds:
    due_backlog: int
    oldest_due_s: float
    stuck_after_s: float
    heartbeat_stale_s: float

    @classmethod
    def from_settings(cls, s: Settings) -> Thresholds:
        return cls(
            due_backlog=s.monitor_due_backlog,
            oldest_due_s=s.monitor_oldest_due_s,
            stuck_after_s=s.max_call_s + s.call_grace_s + s.monitor_stuck_margin_s,
            heartbeat_stale_s=s.heartbeat_stale_s,
        )


@dataclass(frozen=True)
class Transition:
    condition: str
    state: State
    message: str  # spoken by the voice alert, the webhook's text
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reading:
    """One condition's verdict on the facts, with what to say either way."""

    on: bool
    firing: str
    recovered: str
    details: dict[str, Any]


class ActiveSet(Protocol):
    """The conditions currently firing. `add`/`remove` say whether they changed the set:
    only the caller that changed it takes the transition."""

    def add(self, condition: str) -> bool: ...

    def remove(self, condition: str) -> bool: ...


class MemoryActive:
    """An in-process active set: the pure state machine, for tests and one process."""

    def __init__(self) -> None:
        self.conditions: set[str] = set()

    def add(self, condition: str) -> bool:
        if condition in self.conditions:
            return False
        self.conditions.add(condition)
        return True

    def remove(self, condition: str) -> bool:
        if condition not in self.conditions:
            return False
        self.conditions.discard(condition)
        return True


class RedisActive:
    """The active set shared by every scheduler: SADD/SREM report whether they changed it,
    atomically, so exactly one scheduler takes each transition."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._client = client
        self.key = f"{prefix}:monitor:active"

    def add(self, condition: str) -> bool:
        return int(self._client.sadd(self.key, condition)) == 1  # type: ignore[arg-type]

    def remove(self, condition: str) -> bool:
        return int(self._client.srem(self.key, condition)) == 1  # type: ignore[arg-type]


def evaluate(t: Thresholds, f: Facts) -> dict[str, Reading]:
    """Each condition's verdict: pure, so the thresholds are testable on their own."""
    age = round(f.oldest_due_s)
    return {
        DUE_BACKLOG: Reading(
            f.due_leads > t.due_backlog,
            f"{f.due_leads} leads are due, over the limit of {t.due_backlog}.",
            f"the due backlog is down to {f.due_leads} leads (limit {t.due_backlog}).",
            {"due_leads": f.due_leads, "limit": t.due_backlog},
        ),
        OLDEST_DUE: Reading(
            f.oldest_due_s > t.oldest_due_s,
            f"the oldest due lead has waited {age} seconds, over the limit of {t.oldest_due_s:g}.",
            f"the oldest due lead has waited {age} seconds (limit {t.oldest_due_s:g}).",
            {"oldest_due_s": round(f.oldest_due_s, 3), "limit_s": t.oldest_due_s},
        ),
        STUCK_CALLS: Reading(
            f.stuck_calls >= 1,
            f"{f.stuck_calls} calls have had no final status for over {t.stuck_after_s:g} seconds.",
            "no call is stuck any more.",
            {"stuck_calls": f.stuck_calls, "after_s": t.stuck_after_s},
        ),
        NO_WORKERS: Reading(
            f.workers_alive < 1,
            f"no worker process has beaten in {t.heartbeat_stale_s:g} seconds;"
            " no calls are being placed.",
            f"{f.workers_alive} worker processes are alive again.",
            {"workers_alive": f.workers_alive, "stale_s": t.heartbeat_stale_s},
        ),
    }


class Monitor:
    """Edge-triggered conditions: `check` returns only what started or ended since the
    active set last saw it, so a condition that stays true alerts once."""

    def __init__(self, thresholds: Thresholds, active: ActiveSet | None = None) -> None:
        self.thresholds = thresholds
        self.active: ActiveSet = active if active is not None else MemoryActive()

    def check(self, facts: Facts) -> list[Transition]:
        out: list[Transition] = []
        for condition, r in evaluate(self.thresholds, facts).items():
            if r.on and self.active.add(condition):
                out.append(
                    Transition(condition, FIRING, f"Switchboard alert: {r.firing}", r.details)
                )
            elif not r.on and self.active.remove(condition):
                out.append(
                    Transition(
                        condition, RECOVERED, f"Switchboard recovered: {r.recovered}", r.details
                    )
                )
        return out


# One statement, each part through a partial index (leads_due_idx,
# call_attempts_open_idx): the cost follows the live backlog, not history.
FACTS_SQL = """
WITH pause AS (
    SELECT coalesce(bool_or(scope = 'global'), false) AS everything,
           coalesce(array_agg(scope_id) FILTER (WHERE scope = 'reseller'), '{}') AS resellers
    FROM controls WHERE paused
), due AS (
    SELECT count(*) AS n, extract(epoch FROM now() - min(l.next_attempt_at)) AS oldest_s
    FROM leads l, pause
    WHERE l.status = 'BACKLOG' AND l.next_attempt_at <= now()
      AND NOT pause.everything AND NOT (l.reseller_id = ANY(pause.resellers))
)
SELECT due.n AS due_leads, due.oldest_s AS oldest_due_s,
       (SELECT count(*) FROM call_attempts a
        WHERE a.ended_at IS NULL AND a.started_at < now() - make_interval(secs => %s))
           AS stuck_calls
FROM due
"""


def gather(rt: Runtime, conn: Connection) -> Facts:
    """The facts: one query to PostgreSQL, one script call to Redis."""
    s = rt.settings
    row = conn.execute(FACTS_SQL, (Thresholds.from_settings(s).stuck_after_s,)).fetchone()
    assert row is not None
    seen = Heartbeats(rt.redis, s.redis_prefix).read(s.heartbeat_stale_s, (heartbeat.WORKER,))
    return Facts(
        due_leads=int(row["due_leads"]),
        oldest_due_s=max(float(row["oldest_due_s"] or 0.0), 0.0),
        stuck_calls=int(row["stuck_calls"]),
        workers_alive=seen[heartbeat.WORKER].alive,
    )


def step(
    rt: Runtime, fire: Fire | None, notify: Callable[[Transition], None] | None
) -> list[Transition]:
    """Gather the facts, take the transitions this scheduler wins in Redis, then alert.
    Returns [] when another scheduler is evaluating right now."""
    monitor = Monitor(
        Thresholds.from_settings(rt.settings), RedisActive(rt.redis, rt.settings.redis_prefix)
    )
    with rt.pool.connection() as conn, conn.transaction():
        got = conn.execute(
            "SELECT pg_try_advisory_xact_lock(%s) AS got", (LOCK_MONITOR,)
        ).fetchone()
        if not got or not got["got"]:
            return []
        conn.execute("SET LOCAL statement_timeout = '5s'")
        # Inside the lock: transitions are taken in the order the facts were read.
        transitions = monitor.check(gather(rt, conn))
    deliver(transitions, fire, notify)
    return transitions


def deliver(
    transitions: list[Transition], fire: Fire | None, notify: Callable[[Transition], None] | None
) -> None:
    """Log each transition, call the group for a start, post both kinds to the webhook.
    Outside the lock and its transaction: the alert service does its own database work."""
    for t in transitions:
        voice = "off"
        if t.state == FIRING:
            log.warning("health_condition_firing", condition=t.condition, **t.details)
            if fire is not None:
                try:
                    fire(t.condition, t.message)
                    voice = "sent"
                except Exception:
                    log.exception("health_alert_fire_failed", condition=t.condition)
                    voice = "failed"
        else:
            log.info("health_condition_recovered", condition=t.condition, **t.details)
        if notify is not None:
            details = t.details if t.state == RECOVERED else {**t.details, "voice_alert": voice}
            notify(Transition(t.condition, t.state, t.message, details))


def alert_id(condition: str) -> str:
    """One alert id per condition: a fire while its alert is still open dedups to it."""
    return f"switchboard-health:{condition}"


def alert_firer(rt: Runtime) -> Fire | None:
    """The voice alert to the configured group, or None when no group is configured."""
    reseller, group = rt.settings.monitor_reseller, rt.settings.monitor_group
    if not reseller or not group:
        return None

    def fire(condition: str, message: str) -> None:
        from dispatcher import alerts  # lazily: only a scheduler with a group needs it

        with rt.pool.connection() as conn:
            alerts.fire_from_monitor(conn, rt, reseller, group, alert_id(condition), message)

    return fire


def webhook_notifier(settings: Settings) -> Callable[[Transition], None] | None:
    """Posts each transition to `monitor_webhook_url`, or None when it is unset."""
    url = settings.monitor_webhook_url
    if not url:
        return None
    timeout = settings.monitor_webhook_timeout_s
    return lambda t: post_webhook(url, t, timeout)


def post_webhook(url: str, t: Transition, timeout_s: float) -> bool:
    """POST Slack-compatible JSON (`text` is what Slack shows); errors are logged, never
    raised. The URL is not logged: a Slack webhook URL is a secret."""
    body = {"text": t.message, "condition": t.condition, "state": t.state, "details": t.details}
    try:
        httpx.post(url, json=body, timeout=timeout_s).raise_for_status()
    except httpx.HTTPStatusError as exc:
        error = f"HTTP {exc.response.status_code}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}".replace(url, "<webhook url>")
    else:
        return True
    log.warning("health_webhook_failed", condition=t.condition, state=t.state, error=error)
    return False


def check_health(rt: Runtime) -> list[Transition]:
    """One pass for the scheduler loop, with the alerting the settings configure."""
    return step(rt, alert_firer(rt), webhook_notifier(rt.settings))
