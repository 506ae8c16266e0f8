"""`GET /health`: is the whole dispatcher working, not only this API process?

Five checks, each `ok`, `warn: ...` or `fail: ...`:

- postgres: one indexed query answers (it also gives the due backlog's age);
- redis: one script answers (it also reads the heartbeats);
- scheduler: the newest scheduler heartbeat is younger than SWITCHBOARD_HEARTBEAT_STALE_S;
- workers: at least SWITCHBOARD_HEALTH_MIN_WORKERS worker processes beat within that time;
- due_backlog: how long the oldest due lead has waited: a warning past
  SWITCHBOARD_HEALTH_DUE_WARN_S (the "oldest due lead" alert), a failure past
  SWITCHBOARD_HEALTH_DUE_FAIL_S (the "stall" alert; 0 turns it off). While any pause is in
  force, waiting is expected, so it only warns.

Any `fail` makes it a 503 naming the failed checks; warnings keep it a 200. Both probes
run at once with short timeouts and no retries, so the answer comes within about
TIMEOUT_S even when a store is down: cheap enough for a load balancer or an uptime
monitor every few seconds. `details` carries the numbers behind the verdicts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.di import NamedDependency

from dispatcher import heartbeat
from dispatcher.heartbeat import Heartbeats, Seen
from dispatcher.runtime import Runtime
from dispatcher.settings import Settings

TIMEOUT_S = 2.0

# The oldest due lead, through leads_due_idx (one index entry), and whether any pause is
# in force (controls is a handful of rows).
DUE_SQL = """
SELECT extract(epoch FROM now() - min(next_attempt_at)) AS oldest_due_s,
       EXISTS (SELECT 1 FROM controls WHERE paused) AS paused
FROM leads WHERE status = 'BACKLOG' AND next_attempt_at <= now()
"""


@dataclass(frozen=True)
class Backlog:
    oldest_due_s: float  # 0 when nothing is due
    paused: bool


def _postgres(runtime: Runtime) -> Backlog:
    with runtime.pool.connection(timeout=TIMEOUT_S) as conn, conn.transaction():
        conn.execute(f"SET LOCAL statement_timeout = {int(TIMEOUT_S * 1000)}")
        row = conn.execute(DUE_SQL).fetchone()
    assert row is not None
    return Backlog(max(float(row["oldest_due_s"] or 0.0), 0.0), bool(row["paused"]))


def open_probe(app: Litestar) -> None:
    """Startup hook: a Redis client with short timeouts and no retries for the probe (the
    shared client has neither, and a probe must answer fast)."""
    settings = app.state.runtime.settings
    client = heartbeat.short_timeout_client(settings.redis_url or "", TIMEOUT_S)
    app.state.health_redis = client
    app.state.health_beats = Heartbeats(client, settings.redis_prefix)


def close_probe(app: Litestar) -> None:
    """Shutdown hook: close the probe's Redis client."""
    app.state.health_redis.close()


def _failure(exc: BaseException) -> str:
    return f"fail: {type(exc).__name__}: {exc}"[:300]


def evaluate(
    settings: Settings,
    backlog: Backlog | BaseException,
    seen: dict[str, Seen] | BaseException,
) -> tuple[dict[str, str], dict[str, Any]]:
    """The checks and their numbers from what the two probes returned (or raised)."""
    checks: dict[str, str] = {}
    details: dict[str, Any] = {}
    stale = settings.heartbeat_stale_s

    checks["postgres"] = _failure(backlog) if isinstance(backlog, BaseException) else "ok"
    checks["redis"] = _failure(seen) if isinstance(seen, BaseException) else "ok"

    if isinstance(seen, BaseException):
        checks["scheduler"] = checks["workers"] = "fail: unknown, Redis did not answer"
    else:
        sched, workers = seen[heartbeat.SCHEDULER], seen[heartbeat.WORKER]
        details["scheduler_heartbeat_age_s"] = _round(sched.age_s)
        details["worker_heartbeat_age_s"] = _round(workers.age_s)
        details["workers_alive"] = workers.alive
        if sched.age_s is None:
            checks["scheduler"] = "fail: no scheduler heartbeat"
        elif sched.age_s > stale:
            checks["scheduler"] = f"fail: last heartbeat {sched.age_s:.1f}s ago (limit {stale:g}s)"
        else:
            checks["scheduler"] = "ok"
        need = settings.health_min_workers
        if workers.alive >= need:
            checks["workers"] = "ok"
        else:
            checks["workers"] = (
                f"fail: {workers.alive} worker process(es) beat in the last {stale:g}s, need {need}"
            )

    if isinstance(backlog, BaseException):
        checks["due_backlog"] = "fail: unknown, PostgreSQL did not answer"
    else:
        age = backlog.oldest_due_s
        details["oldest_due_age_s"] = _round(age)
        details["paused"] = backlog.paused
        fail_s, warn_s = settings.health_due_fail_s, settings.health_due_warn_s
        late = f"the oldest due lead has waited {age:.0f}s"
        if fail_s and age > fail_s and not backlog.paused:
            checks["due_backlog"] = f"fail: {late} (limit {fail_s:g}s)"
        elif age > warn_s or (fail_s and age > fail_s):
            paused = "; a pause is in force" if backlog.paused else ""
            checks["due_backlog"] = f"warn: {late} (warning past {warn_s:g}s){paused}"
        else:
            checks["due_backlog"] = "ok"
    return checks, details


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@get("/health", tags=["operations"], summary="Health of the whole dispatcher")
async def health(
    request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
) -> Response[dict[str, Any]]:
    """200 when no check fails (warnings allowed), else 503; each check's verdict."""
    beats: Heartbeats = request.app.state.health_beats
    settings = runtime.settings
    backlog, seen = await asyncio.gather(
        asyncio.to_thread(_postgres, runtime),
        asyncio.to_thread(beats.read, settings.heartbeat_stale_s),
        return_exceptions=True,
    )
    checks, details = evaluate(settings, backlog, seen)
    ok = not any(v.startswith("fail") for v in checks.values())
    body = {"status": "ok" if ok else "fail", "checks": checks, "details": details}
    return Response(body, status_code=200 if ok else 503)
