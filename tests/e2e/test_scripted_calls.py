"""2,000 leads over 3 resellers and 4 numbers of 2-8 channels, scripted outcomes and a
1 s retry: every lead ends as its script implies; no channel over-subscribed, no dial
repeated."""

from __future__ import annotations

from tests.e2e.harness import (
    System,
    assert_ended_as_scripted,
    final_count,
    set_up_world,
    wait_until,
)

N_LEADS = 2000


def test_every_lead_ends_as_scripted(system: System, database_url: str) -> None:
    # Final callbacks only: progress callbacks (and their faults) are test_callback_faults'
    # subject; here they would only add webhook load to a 2-core machine.
    expected = set_up_world(system, N_LEADS, sim_config={"progress": False})
    wait_until(lambda: final_count(database_url) == N_LEADS, timeout_s=240, what="all leads final")
    assert_ended_as_scripted(database_url, expected)
    with system.sim() as sim:
        stats = sim.get("/sim/stats").json()
    assert stats["channel_violations"] == 0
    assert stats["duplicate_dials"] == 0
    assert stats["calls_total"] == sum(e.attempts for e in expected)
