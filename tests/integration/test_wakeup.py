"""Call ends wake the schedulers once per debounce window, never not at all."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from dispatcher import lifecycle, wakeup
from dispatcher.runtime import Runtime
from dispatcher.settings import Settings


@pytest.fixture()
def rt(database_url: str, redis_url: str) -> Iterator[Runtime]:
    runtime = Runtime.open(
        Settings.load({}, database_url=database_url, redis_url=redis_url), providers={}
    )
    yield runtime
    runtime.close()


def heard(listener: psycopg.Connection, timeout_s: float) -> int:
    return len(list(listener.notifies(timeout=timeout_s)))


def test_a_burst_of_call_ends_sends_one_notify(rt: Runtime, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {lifecycle.NOTIFY_CHANNEL}")
        started = time.monotonic()
        for _ in range(20):
            wakeup.channel_freed(rt)
        windows = (time.monotonic() - started) * 1000 / wakeup.DEBOUNCE_MS
        got = heard(listener, 0.5)
        assert 1 <= got <= windows + 1  # one per window the burst spanned
        assert got < 20
        time.sleep(wakeup.DEBOUNCE_MS / 1000 + 0.05)
        wakeup.channel_freed(rt)  # the next window: heard again
        assert heard(listener, 0.5) == 1


def test_without_redis_every_call_end_notifies(database_url: str) -> None:
    dead = Runtime.open(
        Settings.load({}, database_url=database_url, redis_url="redis://127.0.0.1:1/0"),
        providers={},
    )
    try:
        with psycopg.connect(database_url, autocommit=True) as listener:
            listener.execute(f"LISTEN {lifecycle.NOTIFY_CHANNEL}")
            for _ in range(3):
                wakeup.channel_freed(dead)
            assert heard(listener, 0.5) == 3
    finally:
        dead.close()
