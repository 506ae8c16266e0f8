"""Waking the schedulers when a call ends and frees a channel.

A NOTIFY in every call-end transaction serialises those commits on PostgreSQL's notify
queue lock (held through the commit's WAL flush) and wakes every scheduler once per call:
at a few hundred calls a second that cost more than the calls themselves (measured with
`switchboard bench e2e`). So a call end asks Redis first and only one NOTIFY goes out per
`DEBOUNCE_MS`, in a transaction of its own; a scheduler that sleeps on free channels
still hears about the first one within that window.
"""

from __future__ import annotations

import redis
import structlog

from dispatcher import lifecycle
from dispatcher.runtime import Runtime

log = structlog.get_logger(__name__)
DEBOUNCE_MS = 5


def channel_freed(rt: Runtime) -> None:
    """After the end is committed and the slot released: wake the schedulers, at most
    once per DEBOUNCE_MS across all processes (every NOTIFY when Redis does not answer:
    a wakeup is never lost)."""
    try:
        first = rt.redis.set(f"{rt.settings.redis_prefix}:wakeup", 1, nx=True, px=DEBOUNCE_MS)
    except redis.RedisError:
        log.warning("wakeup_debounce_unavailable")
        first = True
    if first:
        with rt.pool.connection() as conn:
            lifecycle.notify(conn)
