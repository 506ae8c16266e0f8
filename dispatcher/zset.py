"""The Redis ZSET dispatch design of seeds/000, as its data model and worker loop name it.

Small and independent of the shadow and of parity: the shadow runs these primitives on
live traffic, and `switchboard bench compare` runs them as a dispatcher of its own.

- `schedule:leads` (ZSET): member = lead id, score = due time in Unix ms. ZADD on create,
  retry and deferral; ZREM on cancel and finish, and by the promoter.
- a promoter, elected by `SET NX PX` on `promoter:lock` and renewed by compare-and-set,
  moves due ids atomically (one Lua script) to `ready:leads:{lead_id % shards}` (LPUSH).
- workers BLPOP a ready list, RPUSH the id to `processing:leads:{worker}` for crash
  recovery, do their work, then LREM it.

Two details are the seed's and are kept on purpose, so that measurements describe the
seed and not an improved copy: LPUSH + BLPOP serves a ready list newest first, and BLPOP
then RPUSH is two commands (an id popped by a worker that dies before the RPUSH is lost
until the backlog reconciler re-adds it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

PROMOTE_BATCH = 1000

# KEYS[1] = schedule:leads, KEYS[2..] = ready:leads:0 .. ready:leads:{shards-1}
# ARGV[1] = now in ms, ARGV[2] = most ids moved per call
# ZREM decides: of two promoters racing, the slower one's ZREM returns 0 and moves nothing.
PROMOTE_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], 0, ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local shards = #KEYS - 1
local moved = 0
for _, id in ipairs(due) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('LPUSH', KEYS[2 + (tonumber(id) % shards)], id)
    moved = moved + 1
  end
end
return moved
"""

# Renew the lock only while it is still ours: compare and set in one step. (The seed's
# `SET ... XX GET` then compare would overwrite a new holder's value before noticing.)
RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Keys:
    """The seed's key names under one prefix."""

    prefix: str
    shards: int

    @property
    def schedule(self) -> str:
        return f"{self.prefix}schedule:leads"

    def ready(self, shard: int) -> str:
        return f"{self.prefix}ready:leads:{shard}"

    @property
    def ready_all(self) -> list[str]:
        return [self.ready(s) for s in range(self.shards)]

    def processing(self, consumer: str) -> str:
        return f"{self.prefix}processing:leads:{consumer}"

    @property
    def processing_pattern(self) -> str:
        return f"{self.prefix}processing:leads:*"

    @property
    def lock(self) -> str:
        return f"{self.prefix}promoter:lock"

    def shard_of(self, lead_id: int) -> int:
        return lead_id % self.shards


def now_ms() -> int:
    return int(time.time() * 1000)


def schedule(pipe: redis.Redis, keys: Keys, lead_id: int, due_ms: int) -> None:
    """ZADD schedule:leads due_ms lead_id (create, retry, deferral, reconcile)."""
    pipe.zadd(keys.schedule, {str(lead_id): due_ms})


def unschedule(pipe: redis.Redis, keys: Keys, lead_id: int) -> None:
    """ZREM schedule:leads lead_id (cancel, finish)."""
    pipe.zrem(keys.schedule, str(lead_id))


class Promoter:
    """The promoter's one Lua script, registered once per client."""

    def __init__(self, client: redis.Redis, keys: Keys, batch: int = PROMOTE_BATCH) -> None:
        self.keys = keys
        self.batch = batch
        self._script = client.register_script(PROMOTE_LUA)

    def promote(self, at_ms: int | None = None) -> int:
        """Move every id due by `at_ms` (default now) to its ready list; the count moved.
        Each call is atomic; a backlog larger than `batch` takes several calls."""
        at = now_ms() if at_ms is None else at_ms
        total = 0
        while True:
            moved = int(
                self._script(keys=[self.keys.schedule, *self.keys.ready_all], args=[at, self.batch])
            )
            total += moved
            if moved < self.batch:
                return total


class Leader:
    """Leader election by `SET key holder NX PX ttl`, renewed by compare-and-set every
    `renew_s`. Not leader the moment a renewal fails or errs, or once `ttl_s` has passed
    since the last successful one: a promoter that cannot prove its lease stops at once."""

    def __init__(
        self, client: redis.Redis, key: str, holder: str, ttl_s: float, renew_s: float
    ) -> None:
        self.client = client
        self.key = key
        self.holder = holder
        self.ttl_ms = int(ttl_s * 1000)
        self.renew_s = renew_s
        self._renewed_at: float | None = None  # monotonic time of the last proof
        self._renew = client.register_script(RENEW_LUA)
        self._release = client.register_script(RELEASE_LUA)

    @property
    def is_leader(self) -> bool:
        at = self._renewed_at
        return at is not None and time.monotonic() - at < self.ttl_ms / 1000

    def acquire(self) -> bool:
        started = time.monotonic()
        if self.client.set(self.key, self.holder, nx=True, px=self.ttl_ms):
            self._renewed_at = started
            return True
        return False

    def renew(self) -> bool:
        started = time.monotonic()
        try:
            ok = bool(self._renew(keys=[self.key], args=[self.holder, self.ttl_ms]))
        except redis.RedisError:
            self._renewed_at = None
            raise
        self._renewed_at = started if ok else None
        return ok

    def step(self) -> bool:
        """Acquire when not leader, renew when a renewal is due; whether we lead now."""
        if not self.is_leader:
            self._renewed_at = None
            return self.acquire()
        assert self._renewed_at is not None
        if time.monotonic() - self._renewed_at >= self.renew_s:
            return self.renew()
        return True

    def release(self) -> bool:
        """Give the lock up (only if still ours) so a successor need not wait for the TTL."""
        self._renewed_at = None
        return bool(self._release(keys=[self.key], args=[self.holder]))


class Consumer:
    """The seed's worker loop around the work: BLPOP, RPUSH to this worker's processing
    list, ... work ..., LREM."""

    def __init__(self, client: redis.Redis, keys: Keys, consumer_id: str) -> None:
        self.client = client
        self.keys = keys
        self.consumer_id = consumer_id
        self.processing = keys.processing(consumer_id)

    def pop(self, shard: int | Sequence[int] | None = None, timeout_s: float = 1.0) -> int | None:
        """The next ready id of `shard` (one, several, or None: every shard), or None after
        `timeout_s`. The id is on this worker's processing list until `done`."""
        shards = range(self.keys.shards) if shard is None else shard
        names = [self.keys.ready(s) for s in ([shards] if isinstance(shards, int) else shards)]
        got = self.client.blpop(names, timeout=timeout_s)
        if got is None:
            return None
        _, member = got
        self.client.rpush(self.processing, member)
        return int(member)

    def done(self, lead_id: int) -> None:
        self.client.lrem(self.processing, 1, str(lead_id))
