"""The seed's ZSET primitives on a real Redis: the promoter moves due ids atomically and
exactly once, leadership passes within the lock's TTL, the worker loop keeps an id on
its processing list until done."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from dispatcher import zset


@pytest.fixture()
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture()
def keys() -> zset.Keys:
    return zset.Keys(f"zt{uuid.uuid4().hex[:8]}:", 4)


def _ready(client: redis.Redis, keys: zset.Keys) -> dict[int, list[int]]:
    return {s: [int(x) for x in client.lrange(keys.ready(s), 0, -1)] for s in range(keys.shards)}


def test_key_names_are_the_seeds_under_the_prefix(keys: zset.Keys) -> None:
    p = keys.prefix
    assert keys.schedule == f"{p}schedule:leads"
    assert keys.ready(3) == f"{p}ready:leads:3"
    assert keys.processing("w1") == f"{p}processing:leads:w1"
    assert keys.lock == f"{p}promoter:lock"


def test_promoter_moves_only_due_ids_to_their_shard(client: redis.Redis, keys: zset.Keys) -> None:
    now = zset.now_ms()
    pipe = client.pipeline()
    for lead_id in range(1, 11):
        zset.schedule(pipe, keys, lead_id, now - 1000 + lead_id)  # due
    for lead_id in range(11, 16):
        zset.schedule(pipe, keys, lead_id, now + 60_000)  # not yet
    pipe.execute()

    moved = zset.Promoter(client, keys, batch=3).promote(now)

    assert moved == 10  # several batches of 3 in one call
    assert sorted(int(m) for m in client.zrange(keys.schedule, 0, -1)) == list(range(11, 16))
    ready = _ready(client, keys)
    assert sorted(i for ids in ready.values() for i in ids) == list(range(1, 11))
    assert all(i % keys.shards == shard for shard, ids in ready.items() for i in ids)
    # LPUSH then BLPOP, as the seed writes it: within a shard the newest due comes first.
    assert ready[1] == [9, 5, 1]


def test_unschedule_removes_the_member(client: redis.Redis, keys: zset.Keys) -> None:
    pipe = client.pipeline()
    zset.schedule(pipe, keys, 7, 1)
    zset.unschedule(pipe, keys, 7)
    pipe.execute()
    assert zset.Promoter(client, keys).promote() == 0
    assert client.zcard(keys.schedule) == 0


def test_racing_promoters_move_each_id_exactly_once(client: redis.Redis, keys: zset.Keys) -> None:
    n = 5000
    client.zadd(keys.schedule, {str(i): i for i in range(1, n + 1)})
    totals: list[int] = []
    start = threading.Barrier(4)

    def run() -> None:
        promoter = zset.Promoter(client, keys, batch=50)
        start.wait()
        totals.append(promoter.promote(n + 1))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sum(totals) == n
    moved = [i for ids in _ready(client, keys).values() for i in ids]
    assert len(moved) == n and len(set(moved)) == n
    assert client.zcard(keys.schedule) == 0


def test_a_second_leader_takes_over_within_the_ttl(client: redis.Redis, keys: zset.Keys) -> None:
    a = zset.Leader(client, keys.lock, "a", ttl_s=1.0, renew_s=0.3)
    b = zset.Leader(client, keys.lock, "b", ttl_s=1.0, renew_s=0.3)
    assert a.step() and a.is_leader
    assert not b.step()
    # a keeps renewing past its TTL: b never gets in.
    for _ in range(6):
        time.sleep(0.3)
        assert a.step()
        assert not b.step()
    # a dies (stops renewing): b leads within the TTL (+ its own polling step).
    died = time.monotonic()
    while not b.step():
        time.sleep(0.05)
    took = time.monotonic() - died
    assert took <= 1.0 + 0.1, took
    assert client.get(keys.lock) == b"b"
    # a comes back: its compare-and-set renewal fails, and it stops leading at once.
    assert not a.renew()
    assert not a.is_leader
    assert client.get(keys.lock) == b"b"


def test_a_leader_that_cannot_renew_stops_leading_before_its_ttl(
    client: redis.Redis, keys: zset.Keys
) -> None:
    a = zset.Leader(client, keys.lock, "a", ttl_s=5.0, renew_s=0.0)
    assert a.acquire()
    client.delete(keys.lock)  # e.g. a FLUSHALL
    assert not a.step()
    assert not a.is_leader


def test_release_only_frees_our_own_lock(client: redis.Redis, keys: zset.Keys) -> None:
    a = zset.Leader(client, keys.lock, "a", ttl_s=5.0, renew_s=1.0)
    b = zset.Leader(client, keys.lock, "b", ttl_s=5.0, renew_s=1.0)
    assert a.acquire()
    assert not b.release()
    assert client.get(keys.lock) == b"a"
    assert a.release()
    assert b.acquire()


def test_consumer_holds_the_id_on_its_processing_list_until_done(
    client: redis.Redis, keys: zset.Keys
) -> None:
    client.zadd(keys.schedule, {"42": 1})
    zset.Promoter(client, keys).promote()
    consumer = zset.Consumer(client, keys, "w1")

    assert consumer.pop(None, 0.5) == 42
    assert client.lrange(keys.processing("w1"), 0, -1) == [b"42"]
    consumer.done(42)
    assert client.llen(keys.processing("w1")) == 0
    started = time.monotonic()
    assert consumer.pop(2, 0.2) is None  # an empty shard: BLPOP times out
    assert time.monotonic() - started >= 0.15
