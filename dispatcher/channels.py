"""Per-number channel slots in Redis: a counting semaphore that cannot over-dial.

A number's holders are a sorted set, member = attempt id, score = lease expiry (ms).
Acquire drops expired holders and adds the attempt only while fewer than `max_channels`
hold it; release removes the attempt id, so releasing twice is harmless and a crashed
holder expires by itself (the list-of-tokens design duplicates tokens on a double
release and leaks them on a crash). Each number also has a `ready` marker set when its
semaphore was last rebuilt from PostgreSQL: after a flush the marker is gone and every
acquire fails until the reconciler rebuilds, so a flushed Redis costs a pause, never
an over-dial. Keys share a hash tag per number for Redis Cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis

# Not Dramatiq's ConcurrentRateLimiter: our slot is taken by the dispatch actor and
# released by the webhook in another process, by attempt id, with a per-number limit
# read from PostgreSQL at each acquire.
# KEYS: holders, ready marker, calls-per-second "theoretical arrival time" (GCRA).
# ARGV: now_ms, expiry_ms, attempt id, max_channels, interval_ms (0: no cps limit).
# Returns {1, 0} taken, {0, 0} all channels busy, {0, wait_ms} cps limit, {-1, 0} not ready.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[2]) == 0 then return {-1, 0} end
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return {1, 0} end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return {0, 0} end
local interval = tonumber(ARGV[5])
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[3]) or '0')
  if tat > now then return {0, tat - now} end
  redis.call('SET', KEYS[3], now + interval, 'PX', interval + 60000)
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
return {1, 0}
"""

# Release remembers the attempt for a while, so that a rebuild working from a slightly
# older read of PostgreSQL does not add back a slot that was just freed.
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[1]) - 600000)
"""

# ARGV: now_ms, lease_ms, grace_ms, then the attempt ids in flight per PostgreSQL.
# Holders PostgreSQL does not know are kept for `grace` after they were taken (their
# attempt row may not be committed yet), then dropped; known ones are (re-)added unless
# released since.
_REBUILD = """
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local grace = tonumber(ARGV[3])
local known = {}
for i = 4, #ARGV do known[ARGV[i]] = true end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local holders = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local removed = 0
for i = 1, #holders, 2 do
  local member, expiry = holders[i], tonumber(holders[i + 1])
  if not known[member] and expiry - lease < now - grace then
    redis.call('ZREM', KEYS[1], member)
    removed = removed + 1
  end
end
local added = 0
for i = 4, #ARGV do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) and not redis.call('ZSCORE', KEYS[3], ARGV[i]) then
    redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
    added = added + 1
  end
end
redis.call('SET', KEYS[2], now)
return {added, removed}
"""


@dataclass(frozen=True)
class Acquired:
    taken: bool
    rebuilding: bool = False  # not rebuilt since a flush: nobody may dial on this number
    cps_wait_s: float | None = None  # the number's calls-per-second slot frees in this long


def cps_interval_ms(cps: float | None) -> int:
    """Spacing between calls of a number limited to `cps` calls per second, with a margin
    so that no 1-second window, as the provider measures it, ever holds more than `cps`."""
    if not cps:
        return 0
    return int(1000 / cps * 1.05) + 20


class Channels:
    def __init__(self, client: redis.Redis, prefix: str, lease_s: float, grace_s: float) -> None:
        self._redis = client
        self._prefix = prefix
        self._lease_ms = int(lease_s * 1000)
        self._grace_ms = int(grace_s * 1000)
        self._acquire = client.register_script(_ACQUIRE)
        self._rebuild = client.register_script(_REBUILD)
        self._release = client.register_script(_RELEASE)

    def key(self, number_id: int) -> str:
        return f"{self._prefix}:chan:{{{number_id}}}"

    def ready_key(self, number_id: int) -> str:
        return f"{self._prefix}:chan:{{{number_id}}}:ready"

    def released_key(self, number_id: int) -> str:
        return f"{self._prefix}:chan:{{{number_id}}}:released"

    def cps_key(self, number_id: int) -> str:
        return f"{self._prefix}:chan:{{{number_id}}}:cps"

    def acquire(
        self, number_id: int, attempt_id: str, max_channels: int, cps: float | None = None
    ) -> Acquired:
        now = _now_ms()
        status, wait_ms = self._acquire(
            keys=[self.key(number_id), self.ready_key(number_id), self.cps_key(number_id)],
            args=[now, now + self._lease_ms, attempt_id, max_channels, cps_interval_ms(cps)],
        )
        if status == -1:
            return Acquired(False, rebuilding=True)
        if status == 0 and wait_ms:
            return Acquired(False, cps_wait_s=int(wait_ms) / 1000)
        return Acquired(bool(status))

    def cps_budget(self, number_id: int, cps: float | None) -> tuple[int | None, float]:
        """(1 when the number may start a call now, 0 when its calls-per-second limit
        holds it back, None for no limit; seconds until the slot after that). The
        scheduler claims no more than that, so leads wait in PostgreSQL instead of being
        claimed only to wait again."""
        interval = cps_interval_ms(cps)
        if not interval:
            return None, 0.0
        now = _now_ms()
        raw = self._redis.get(self.cps_key(number_id))
        tat = int(raw) if raw else 0
        if tat > now:
            return 0, (tat - now) / 1000
        return 1, interval / 1000

    def release(self, number_id: int, attempt_id: str) -> None:
        self._release(
            keys=[self.key(number_id), self.released_key(number_id)],
            args=[_now_ms(), attempt_id],
        )

    def holders(self, number_id: int) -> set[str]:
        now = _now_ms()
        members = self._redis.zrangebyscore(self.key(number_id), now, "+inf")
        return {m.decode() if isinstance(m, bytes) else m for m in members}

    def rebuild(self, number_id: int, in_flight: Iterable[str]) -> tuple[int, int]:
        """Make the semaphore match PostgreSQL's in-flight attempts; (added, removed)."""
        added, removed = self._rebuild(
            keys=[self.key(number_id), self.ready_key(number_id), self.released_key(number_id)],
            args=[_now_ms(), self._lease_ms, self._grace_ms, *in_flight],
        )
        return int(added), int(removed)

    def is_ready(self, number_id: int) -> bool:
        return bool(self._redis.exists(self.ready_key(number_id)))


def _now_ms() -> int:
    return int(time.time() * 1000)
