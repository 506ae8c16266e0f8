"""Duplicated, reordered and dropped status callbacks: each call still ends once, with the
outcome the simulator gave it."""

from __future__ import annotations

import psycopg

from tests.e2e.harness import System, final_count, lead_results, set_up_world, wait_until

N_LEADS = 300
# The simulator's outcome → the attempt outcome Switchboard must record.
RECORDED = {"answered": "completed", "completed": "completed"}


def test_each_call_ends_once_with_its_outcome(system: System, database_url: str) -> None:
    faults = {"callbacks": {"duplicate": 0.3, "reorder": 0.3, "drop": 0.1}}
    expected = set_up_world(system, N_LEADS, sim_config=faults)
    wait_until(lambda: final_count(database_url) == N_LEADS, 180, what="all leads final")

    results = lead_results(database_url)
    assert {e.phone: results[e.phone] for e in expected} == {
        e.phone: (e.status, e.attempts, e.outcome) for e in expected
    }
    with system.sim() as sim:
        calls = sim.get("/sim/calls").json()
        stats = sim.get("/sim/stats").json()
    assert stats["faults"]["duplicated"] > 0 and stats["faults"]["dropped"] > 0
    assert stats["faults"]["reordered"] > 0
    with psycopg.connect(database_url) as conn:
        attempts = dict(conn.execute("SELECT id::text, outcome FROM call_attempts").fetchall())
        ends = conn.execute(
            "SELECT attempt_id::text, count(*) FROM lead_events"
            " WHERE reason LIKE 'call\\_%%' GROUP BY 1 HAVING count(*) > 1"
        ).fetchall()
    assert len(attempts) == len(calls) == sum(e.attempts for e in expected)
    sim_outcomes = {c["attempt_id"]: RECORDED.get(c["outcome"], c["outcome"]) for c in calls}
    assert attempts == sim_outcomes
    assert ends == []  # no attempt ended its lead twice
