"""Shadow mode: the ZSET dispatch design of seeds/000 run beside the real schedule, on the
same traffic, dialing nobody.

Every process (API, scheduler, workers) gets one `ProcessShadow` from `Runtime.open`: the
flag cache, the observation/event buffers with their flusher thread, and the mirror the
lifecycle calls after each change (`dispatcher.shadow_hook`). The mirror applies each
change of a shadowed lead to the ZSET layout (`dispatcher.zset`): BACKLOG → ZADD (and
the attempt number in `{p}attempts`), a final status → ZREM, a real claim → a 'pg'
observation. Scheduler processes also run `SchedulerShadow`: a promoter candidate, the
consumers that record a 'zset' observation per pop, and the seed's two reconcilers.

Safety: every Redis call is wrapped; an error is counted, logged with the lead id and
recorded as an event, never raised. The shadow reads PostgreSQL (flags, BACKLOG leads)
and writes only its own tables, never inside a real transaction.
"""

from __future__ import annotations

import atexit
import datetime as dt
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
import structlog
from psycopg import Connection
from psycopg_pool import ConnectionPool
from redis.backoff import NoBackoff
from redis.retry import Retry

from db.pool import connect
from dispatcher import metrics, shadow_flags, shadow_hook, shadow_store, zset
from dispatcher.settings import Settings
from dispatcher.shadow_flags import Flags
from dispatcher.shadow_store import EVENT_KINDS, Recorder

if TYPE_CHECKING:
    from dispatcher.runtime import Runtime

log = structlog.get_logger(__name__)

__all__ = ["EVENT_KINDS", "ProcessShadow", "SchedulerShadow", "install", "uninstall"]

FINAL = frozenset(("COMPLETED", "FAILED", "EXPIRED", "SKIPPED", "CANCELLED"))
FLUSH_S = 0.2  # how often buffered observations and events are written
BREAKER_S = 1.0  # after a connection error the mirror skips Redis this long
RECONCILE_JITTER_MS = 2000  # the seed's rand(0, 2000 ms) on re-added members
RECONCILE_CHUNK = 1000
PRUNE_S = 600.0
SENTINEL_S = 1.0


class ShadowKeys(zset.Keys):
    """The seed's keys plus the shadow's own bookkeeping, all under the shadow prefix."""

    @property
    def attempts(self) -> str:  # lead id → "attempt_no|due_ms|reseller_id", beside the ZADD
        return f"{self.prefix}attempts"

    @property
    def dispatched(self) -> str:  # lead id → the attempt a consumer last popped
        return f"{self.prefix}dispatched"

    @property
    def sentinel(self) -> str:
        return f"{self.prefix}sentinel"

    @property
    def last_tick(self) -> str:
        return f"{self.prefix}promoter:last_tick"


def keys_for(settings: Settings) -> ShadowKeys:
    return ShadowKeys(settings.shadow_prefix, settings.shadow_shards)


def encode_attempt(attempt_no: int, due_ms: int, reseller_id: str) -> str:
    return f"{attempt_no}|{due_ms}|{reseller_id}"


def decode_attempt(raw: bytes | str) -> tuple[int, int, str]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    attempt, due, reseller = text.split("|", 2)
    return int(attempt), int(due), reseller


def to_ms(value: dt.datetime) -> int:
    return int(value.timestamp() * 1000)


def from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def classify(exc: BaseException) -> str:
    """A bounded label for a Redis error (metrics, events, the report)."""
    if isinstance(exc, redis.exceptions.BusyLoadingError):
        return "loading"
    if isinstance(exc, redis.exceptions.TimeoutError):
        return "timeout"
    if isinstance(exc, redis.exceptions.ConnectionError):
        return "connection"
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return "readonly"
    if isinstance(exc, redis.exceptions.ResponseError):
        return "response"
    return "other"


def redis_client(url: str, timeout_s: float) -> redis.Redis:
    """A client that fails fast: no retries, short timeouts (redis-py retries connection
    errors three times with backoff by default, which the real path must never wait on)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=min(timeout_s, 0.5),
        retry=Retry(NoBackoff(), 0),
    )


# --- the mirror: one per process, called by the lifecycle -------------------------------


class Mirror:
    """Applies lifecycle changes of shadowed leads to the ZSET layout. Never raises."""

    def __init__(
        self, client: redis.Redis, keys: ShadowKeys, flags: Flags, recorder: Recorder
    ) -> None:
        self.client = client
        self.keys = keys
        self.flags = flags
        self.recorder = recorder
        self._down_until = 0.0

    def changed(self, rows: Sequence[Mapping[str, Any]]) -> None:
        state = self.flags.state
        if not state.any_enabled:
            return
        try:
            self._apply(rows, state)
        except Exception:  # a bug here must not become the real path's
            log.exception("shadow_mirror_failed")

    def created(
        self, ids: Sequence[int | None], leads: Sequence[Any], inserted: Mapping[int, Any]
    ) -> None:
        if not self.flags.state.any_enabled:
            return
        rows = [
            {
                "id": lead_id,
                "reseller_id": lead.reseller_id,
                "status": inserted[lead_id]["status"],
                "next_attempt_at": lead.next_attempt_at,
                "attempt_count": 0,
                "from_status": None,
            }
            for lead_id, lead in zip(ids, leads, strict=True)
            if lead_id in inserted and inserted[lead_id]["status"] == "BACKLOG"
        ]
        self.changed(rows)

    def _apply(self, rows: Sequence[Mapping[str, Any]], state: shadow_flags.FlagState) -> None:
        writes: list[tuple[int, str, str]] = []  # (lead id, reseller, op)
        pipe: Any = None
        observed_at: dt.datetime | None = None
        for row in rows:
            reseller = row.get("reseller_id")
            if reseller is None or not state.applies(reseller):
                continue
            lead_id, status = int(row["id"]), row["status"]
            if status == "BACKLOG":
                pipe = pipe if pipe is not None else self.client.pipeline(transaction=True)
                due_ms = to_ms(row["next_attempt_at"])
                attempt = int(row["attempt_count"]) + 1
                zset.schedule(pipe, self.keys, lead_id, due_ms)
                pipe.hset(
                    self.keys.attempts, str(lead_id), encode_attempt(attempt, due_ms, reseller)
                )
                writes.append((lead_id, reseller, "zadd"))
            elif status in FINAL:
                pipe = pipe if pipe is not None else self.client.pipeline(transaction=True)
                zset.unschedule(pipe, self.keys, lead_id)
                pipe.hdel(self.keys.attempts, str(lead_id))
                pipe.hdel(self.keys.dispatched, str(lead_id))
                writes.append((lead_id, reseller, "zrem"))
            elif status == "QUEUED" and row.get("from_status") == "BACKLOG":
                observed_at = observed_at or shadow_store.utcnow()
                self.recorder.observe(
                    "pg",
                    lead_id,
                    int(row["attempt_count"]) + 1,
                    reseller,
                    row["next_attempt_at"],
                    observed_at,
                )
                metrics.SHADOW_OBSERVATIONS.labels(path="pg").inc()
        if pipe is not None:
            self._execute(pipe, writes)

    def _execute(self, pipe: Any, writes: list[tuple[int, str, str]]) -> None:
        if time.monotonic() < self._down_until:
            self._failed(writes, "circuit_open")
            return
        try:
            pipe.execute()
        except redis.RedisError as exc:
            error = classify(exc)
            if error in ("connection", "timeout", "loading"):
                self._down_until = time.monotonic() + BREAKER_S
            self._failed(writes, error, exc)

    def _failed(
        self, writes: list[tuple[int, str, str]], error: str, exc: BaseException | None = None
    ) -> None:
        for n, (lead_id, reseller, op) in enumerate(writes):
            metrics.SHADOW_REDIS_ERRORS.labels(where=op, error=error).inc()
            self.recorder.event(
                shadow_store.DUAL_WRITE_FAILED,
                lead_id=lead_id,
                reseller_id=reseller,
                op=op,
                error=error,
            )
            if n < 20:  # a bulk write fails as one: its first leads are enough in the log
                log.warning(
                    "shadow_dual_write_failed",
                    lead_id=lead_id,
                    op=op,
                    error=error,
                    detail=str(exc) if exc else None,
                )
        if len(writes) > 20:
            log.warning("shadow_dual_write_failed_more", count=len(writes) - 20, error=error)


# --- per process: flags, buffers, flusher -------------------------------------------------


class ProcessShadow:
    """What every process needs: the flag cache (LISTEN + periodic reload), the buffers
    and their flusher, on one autocommit connection of its own (so the runtime's pool,
    sized for the real path, is never borrowed), and the mirror."""

    def __init__(self, settings: Settings) -> None:
        assert settings.database_url and settings.redis_url
        self.settings = settings
        self.key = (settings.database_url, settings.redis_url, settings.shadow_prefix)
        self.keys = keys_for(settings)
        self.flags = Flags()
        self.recorder = Recorder()
        self.client = redis_client(settings.redis_url, 0.5)
        self.mirror = Mirror(self.client, self.keys, self.flags, self.recorder)
        self._conn: Connection[Any] | None = None
        self._conn_lock = threading.RLock()  # the flusher thread and `flush()` share it
        self._stop = threading.Event()
        self._next_load = 0.0
        try:
            self._connect()
            self._load_flags()
        except Exception:
            log.exception("shadow_flags_unavailable")  # every flag off until it answers
        self._thread = threading.Thread(target=self._run, name="shadow-flusher", daemon=True)
        self._thread.start()

    def _connect(self) -> Connection[Any]:
        if self._conn is None or self._conn.closed:
            assert self.settings.database_url
            self._conn = connect(self.settings.database_url, autocommit=True)
            self._conn.execute(f"LISTEN {shadow_flags.NOTIFY_CHANNEL}")
        return self._conn

    def _load_flags(self) -> None:
        self.flags.load(self._connect())
        self._next_load = time.monotonic() + self.settings.shadow_flag_refresh_s

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._conn_lock:
                    conn = self._connect()
                    notified = False
                    for _ in conn.notifies(timeout=FLUSH_S, stop_after=1):
                        notified = True
                    if notified or time.monotonic() >= self._next_load:
                        self._load_flags()
                    self.recorder.flush(conn)
            except Exception:
                log.exception("shadow_flusher_failed")
                if self._conn is not None:
                    self._conn.close()
                self._stop.wait(0.5)

    def flush(self) -> int:
        """Write what is buffered now (tests, shutdown); the thread does it every 200 ms."""
        with self._conn_lock:
            return self.recorder.flush(self._connect())

    def refresh_flags(self) -> shadow_flags.FlagState:
        with self._conn_lock:
            self._load_flags()
        return self.flags.state

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.flush()
        except Exception:
            log.exception("shadow_final_flush_failed", pending=self.recorder.pending())
        if self._conn is not None:
            self._conn.close()
        self.client.close()


_lock = threading.Lock()
_process: ProcessShadow | None = None
_users: set[int] = set()


def install(rt: Runtime) -> ProcessShadow | None:
    """Give the process its shadow (once; later runtimes of the same database, Redis and
    prefix share it) and put its mirror behind the lifecycle's hook."""
    global _process
    settings = rt.settings
    if not settings.database_url or not settings.redis_url:
        return None
    key = (settings.database_url, settings.redis_url, settings.shadow_prefix)
    with _lock:
        if _process is not None and _process.key != key:
            _close_locked()
        if _process is None:
            _process = ProcessShadow(settings)
            shadow_hook.install(_process.mirror)
        _users.add(id(rt))
        return _process


def uninstall(rt: Runtime) -> None:
    with _lock:
        _users.discard(id(rt))
        if not _users:
            _close_locked()


def current() -> ProcessShadow | None:
    return _process


def _close_locked() -> None:
    global _process
    if _process is None:
        return
    shadow_hook.install(None)
    process, _process = _process, None
    _users.clear()
    process.close()


@atexit.register
def _at_exit() -> None:
    """Workers never close their runtime: write what is buffered before the process goes."""
    with _lock:
        _close_locked()


# --- in scheduler processes: promoter, consumers, reconcilers ----------------------------


@dataclass
class Counts:
    promoted: int = 0
    consumed: int = 0
    readded: int = 0
    reaped: int = 0


class SchedulerShadow:
    """The seed's moving parts. Any number of schedulers may run them: only the leader
    promotes, reconciles, reaps and prunes; every one consumes and watches the sentinel.
    All idle (a 200 ms wait) while every flag is off."""

    def __init__(self, settings: Settings, pool: ConnectionPool, process: ProcessShadow) -> None:
        assert settings.redis_url
        self.settings = settings
        self.pool = pool
        self.process = process
        self.flags = process.flags
        self.recorder = process.recorder
        self.keys = process.keys
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.client = redis_client(settings.redis_url, 5.0)  # BLPOP waits up to 0.5 s
        self.leader = zset.Leader(
            self.client,
            self.keys.lock,
            self.holder,
            settings.shadow_lock_ttl_s,
            settings.shadow_lock_renew_s,
        )
        self.promoter = zset.Promoter(self.client, self.keys)
        self.counts = Counts()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._leading = False
        self._last_tick_ms: int | None = None
        self._sentinel_written = False
        self._stuck_seen: dict[tuple[str, int], float] = {}
        self._rng = random.Random()

    @classmethod
    def start_for(cls, rt: Runtime) -> SchedulerShadow | None:
        process = install(rt)
        if process is None:
            return None
        shadow = cls(rt.settings, rt.pool, process)
        shadow.start()
        return shadow

    def start(self) -> None:
        targets: list[tuple[str, Any]] = [("shadow-promoter", self._promoter_loop)]
        targets += [
            (f"shadow-consumer-{i}", lambda i=i: self._consumer_loop(i))
            for i in range(self.settings.shadow_consumers)
        ]
        targets.append(("shadow-control", self._control_loop))
        for name, target in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop every thread and give the promoter lock up, so a peer takes over at once."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.client.close()

    def _redis_error(self, where: str, exc: BaseException) -> None:
        error = classify(exc)
        metrics.SHADOW_REDIS_ERRORS.labels(where=where, error=error).inc()
        log.warning("shadow_redis_error", where=where, error=error, detail=str(exc))
        self.recorder.event(shadow_store.REDIS_ERROR, where=where, error=error)

    # --- promoter ---------------------------------------------------------------------

    def _promoter_loop(self) -> None:
        tick = self.settings.shadow_promoter_tick_s
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.promoter_step()
            except Exception:
                log.exception("shadow_promoter_failed")
            self._stop.wait(max(tick - (time.monotonic() - started), 0.0))
        if self._leading:
            try:
                self.leader.release()
            except redis.RedisError as exc:
                self._redis_error("leader", exc)
            self._set_leading(False, reason="stopped")

    def promoter_step(self) -> int:
        """One tick: stay (or become) leader, then promote what is due. Returns ids moved."""
        if not self.flags.any_enabled:
            if self._leading:
                try:
                    self.leader.release()
                except redis.RedisError as exc:
                    self._redis_error("leader", exc)
                self._set_leading(False, reason="disabled")
            return 0
        try:
            leading = self.leader.step()
        except redis.RedisError as exc:
            self._redis_error("leader", exc)
            leading = False
        if leading != self._leading:
            self._set_leading(leading, reason="renewal_failed")
        if not leading:
            return 0
        try:
            moved = self.promoter.promote()
            now = zset.now_ms()
            self.client.set(self.keys.last_tick, now)
            self._last_tick_ms = now
        except redis.RedisError as exc:
            self._redis_error("promote", exc)
            return 0
        self.counts.promoted += moved
        return moved

    def _set_leading(self, leading: bool, reason: str) -> None:
        self._leading = leading
        if leading:
            last = None
            try:
                raw = self.client.get(self.keys.last_tick)
                last = int(raw) if raw is not None else None
            except redis.RedisError as exc:
                self._redis_error("leader", exc)
            last = last if last is not None else self._last_tick_ms
            gap_ms = zset.now_ms() - last if last is not None else None
            log.info("shadow_promoter_acquired", holder=self.holder, gap_ms=gap_ms)
            self.recorder.event(shadow_store.PROMOTER_ACQUIRED, holder=self.holder, gap_ms=gap_ms)
        else:
            log.info("shadow_promoter_lost", holder=self.holder, reason=reason)
            self.recorder.event(shadow_store.PROMOTER_LOST, holder=self.holder, reason=reason)

    # --- consumers --------------------------------------------------------------------

    def _consumer_loop(self, index: int) -> None:
        consumer = zset.Consumer(self.client, self.keys, f"{self.holder}:{index}")
        while not self._stop.is_set():
            if not self.flags.any_enabled:
                self._stop.wait(0.2)
                continue
            try:
                self.consume_one(consumer, timeout_s=0.5)
            except redis.RedisError as exc:
                self._redis_error("consume", exc)
                self._stop.wait(0.5)
            except Exception:
                log.exception("shadow_consumer_failed")
                self._stop.wait(0.5)

    def consume_one(self, consumer: zset.Consumer, timeout_s: float) -> int | None:
        """BLPOP, RPUSH to processing, record "would dispatch lead L, attempt A, at T",
        LREM: the seed's worker loop with the dial replaced by an observation."""
        lead_id = consumer.pop(None, timeout_s)
        if lead_id is None:
            return None
        observed_at = shadow_store.utcnow()
        raw = self.client.hget(self.keys.attempts, str(lead_id))
        if raw is None:  # flushed (or finished) between the ZADD and now: nothing to say
            self.recorder.event(
                shadow_store.REDIS_ERROR, lead_id=lead_id, where="consume", error="no_attempt"
            )
        else:
            attempt, due_ms, reseller = decode_attempt(raw)
            if self.flags.applies(reseller):
                self.recorder.observe(
                    "zset", lead_id, attempt, reseller, from_ms(due_ms), observed_at
                )
                metrics.SHADOW_OBSERVATIONS.labels(path="zset").inc()
            self.client.hset(self.keys.dispatched, str(lead_id), attempt)
        consumer.done(lead_id)
        self.counts.consumed += 1
        return lead_id

    # --- reconcilers, sentinel, retention ------------------------------------------------

    def _control_loop(self) -> None:
        s = self.settings
        now = time.monotonic()
        due = {
            "backlog": now + s.shadow_backlog_reconcile_s,
            "reap": now + s.shadow_reap_s,
            "sentinel": now,
            "prune": now,
        }
        while not self._stop.is_set():
            self._stop.wait(0.1)
            if not self.flags.any_enabled:
                continue
            now = time.monotonic()
            for name, interval, leader_only, step in (
                ("sentinel", SENTINEL_S, False, self.check_sentinel),
                ("backlog", s.shadow_backlog_reconcile_s, True, self.reconcile_backlog),
                ("reap", s.shadow_reap_s, True, self.reap_stuck),
                ("prune", PRUNE_S, True, self.prune),
            ):
                if now < due[name] or (leader_only and not self.leader.is_leader):
                    continue
                due[name] = now + interval
                try:
                    step()
                except redis.RedisError as exc:
                    self._redis_error(name if name != "backlog" else "reconcile", exc)
                except Exception:
                    log.exception("shadow_step_failed", step=name)

    def check_sentinel(self) -> bool:
        """A key written once at start; gone means Redis lost everything (FLUSHALL, a
        restart without persistence). Whoever recreates it first reports it."""
        if not self._sentinel_written:
            self.client.set(self.keys.sentinel, self.holder, nx=True)
            self._sentinel_written = True
            return False
        if self.client.exists(self.keys.sentinel):
            return False
        if not self.client.set(self.keys.sentinel, self.holder, nx=True):
            return False
        log.warning("shadow_redis_flushed", detected_by=self.holder)
        self.recorder.event(shadow_store.REDIS_FLUSHED, detected_by=self.holder)
        return True

    def reconcile_backlog(self) -> int:
        """The seed's `reconcile_backlog_to_zset`: BACKLOG leads of shadowed resellers
        missing from the ZSET are re-added with rand(0, 2000 ms) of jitter.

        Two refinements, both so that a healthy shadow reports no repairs: a lead whose
        current attempt a consumer already popped is not missing (it is waiting for the
        real path to claim it), and a lead due later is re-added at its due time plus the
        jitter, not at now (which would dispatch it early)."""
        where, params = self.flags.state.sql_filter("reseller_id")
        after, readded = 0, 0
        while True:
            with self.pool.connection() as conn:
                rows = conn.execute(
                    "SELECT id, reseller_id, attempt_count, next_attempt_at FROM leads"
                    f" WHERE status = 'BACKLOG' AND id > %(after)s AND {where}"
                    " ORDER BY id LIMIT %(limit)s",
                    {**params, "after": after, "limit": RECONCILE_CHUNK},
                ).fetchall()
            if not rows:
                return readded
            after = rows[-1]["id"]
            ids = [str(r["id"]) for r in rows]
            scores = self.client.zmscore(self.keys.schedule, ids)
            popped = self.client.hmget(self.keys.dispatched, ids)
            pipe = self.client.pipeline(transaction=False)
            missing = []
            now = zset.now_ms()
            for row, score, done in zip(rows, scores, popped, strict=True):
                attempt = int(row["attempt_count"]) + 1
                if score is not None or (done is not None and int(done) == attempt):
                    continue
                due_ms = max(to_ms(row["next_attempt_at"]), now)
                due_ms += self._rng.randint(0, RECONCILE_JITTER_MS)
                zset.schedule(pipe, self.keys, row["id"], due_ms)
                pipe.hset(
                    self.keys.attempts,
                    str(row["id"]),
                    encode_attempt(attempt, due_ms, row["reseller_id"]),
                )
                missing.append((row, attempt))
            if missing:
                pipe.execute()
            for row, attempt in missing:
                self.recorder.event(
                    shadow_store.RECONCILE_READDED,
                    lead_id=row["id"],
                    reseller_id=row["reseller_id"],
                    attempt_no=attempt,
                )
            readded += len(missing)
            self.counts.readded += len(missing)
            if missing:
                log.info("shadow_reconcile_readded", count=len(missing))

    def reap_stuck(self) -> int:
        """The seed's `reap_stuck_processing_lists`: an id held on a processing list for
        `shadow_stuck_s` (its consumer died mid-loop) is removed and, if its lead is still
        BACKLOG in PostgreSQL, scheduled again at now. Lists carry no timestamps, so an
        entry's age is counted from when the reaper first saw it."""
        now = time.monotonic()
        seen: dict[tuple[str, int], float] = {}
        stuck: list[tuple[str, int]] = []
        for key in self.client.scan_iter(match=self.keys.processing_pattern, count=500):
            name = key.decode() if isinstance(key, bytes) else str(key)
            for member in self.client.lrange(name, 0, -1):
                entry = (name, int(member))
                first = seen[entry] = self._stuck_seen.get(entry, now)
                if now - first >= self.settings.shadow_stuck_s:
                    stuck.append(entry)
        self._stuck_seen = seen
        if not stuck:
            return 0
        with self.pool.connection() as conn:
            leads = {
                r["id"]: r
                for r in conn.execute(
                    "SELECT id, reseller_id, status, attempt_count FROM leads WHERE id = ANY(%s)",
                    ([lead_id for _, lead_id in stuck],),
                ).fetchall()
            }
        now_ms = zset.now_ms()
        for name, lead_id in stuck:
            lead = leads.get(lead_id)
            readd = lead is not None and lead["status"] == "BACKLOG"
            pipe = self.client.pipeline(transaction=True)
            if readd:
                assert lead is not None
                zset.schedule(pipe, self.keys, lead_id, now_ms)
                pipe.hset(
                    self.keys.attempts,
                    str(lead_id),
                    encode_attempt(int(lead["attempt_count"]) + 1, now_ms, lead["reseller_id"]),
                )
            pipe.lrem(name, 1, str(lead_id))
            pipe.execute()
            self._stuck_seen.pop((name, lead_id), None)
            self.recorder.event(
                shadow_store.REAPED,
                lead_id=lead_id,
                reseller_id=lead["reseller_id"] if lead else None,
                readded=readd,
            )
        self.counts.reaped += len(stuck)
        log.info("shadow_reaped", count=len(stuck))
        return len(stuck)

    def prune(self) -> int:
        assert self.settings.database_url
        with connect(self.settings.database_url, autocommit=True) as conn:
            return shadow_store.prune(conn, self.settings.shadow_retention_days)
