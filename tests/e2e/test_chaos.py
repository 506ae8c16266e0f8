"""The scripted 2,000-lead run with a worker and the scheduler SIGKILLed mid-run and
restarted, and Redis flushed once: the same final states, no channel over-subscribed,
no dial repeated, no lead stuck."""

from __future__ import annotations

import redis

from tests.e2e.harness import (
    System,
    assert_ended_as_scripted,
    final_count,
    set_up_world,
    wait_until,
)

N_LEADS = 2000


def test_kills_and_a_flush_change_no_outcome(system: System, database_url: str) -> None:
    # Final callbacks only: progress callbacks (and their faults) are test_callback_faults'
    # subject; here they would only add webhook load to a 2-core machine.
    expected = set_up_world(system, N_LEADS, sim_config={"progress": False})

    wait_until(lambda: final_count(database_url) >= N_LEADS // 4, 180, what="a quarter done")
    system.kill("worker-1")
    system.kill("scheduler")
    system.start("scheduler", "scheduler")
    system.start("worker-1", "worker", "--processes", "1")

    wait_until(lambda: final_count(database_url) >= N_LEADS // 2, 180, what="half done")
    assert system.settings.redis_url
    client = redis.Redis.from_url(system.settings.redis_url)
    client.flushdb()
    client.close()

    wait_until(lambda: final_count(database_url) == N_LEADS, 300, what="all leads final")
    assert_ended_as_scripted(database_url, expected)
    with system.sim() as sim:
        stats = sim.get("/sim/stats").json()
    assert stats["channel_violations"] == 0
    assert stats["duplicate_dials"] == 0
    assert stats["in_flight"] == 0
