"""Calling hours and calls per second through real processes: leads where it is now day
are called, leads where it is now night wait for their next window opening, nobody is
called outside their window, and no number exceeds its calls-per-second limit."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import psycopg

from tests.e2e.harness import System, wait_until
from tests.integration.test_call_policy import next_opening, zone_where_local_hour_in

WINDOW = {
    "start": "09:00",
    "end": "21:00",
    "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
}
CPS = 4


def test_day_leads_called_night_leads_wait(system: System, database_url: str) -> None:
    day, night = zone_where_local_hour_in(range(11, 19)), zone_where_local_hour_in(range(0, 6))
    with system.sim() as sim:
        sim.post("/sim/reset").raise_for_status()
        sim.put("/sim/config", json={"ring_ms": [10, 30], "talk_ms": [10, 30]}).raise_for_status()
        script = {f"+1415555{i:04d}": ["answered"] for i in range(40)}
        sim.put("/sim/script", json=script).raise_for_status()
    with system.admin() as api:
        template = {
            "calling_window": WINDOW,
            "retry": {"max_attempts": 1, "retry_on": [], "delay_s": 0, "backoff": "fixed"},
            "frequency_cap": None,
            "execution_mode": "telephony",
        }
        api.put("/v1/templates/hours", json=template).raise_for_status()
        number = {"e164": "+12025550199", "provider": "simulator", "max_channels": 20, "cps": CPS}
        api.post("/v1/numbers", json=number).raise_for_status()
        leads = [
            {"phone": f"+1415555{i:04d}", "timezone": day if i % 2 else night, "template": "hours"}
            for i in range(40)
        ]
        posted_at = dt.datetime.now(dt.UTC)
        resp = api.post(
            "/v1/leads/bulk", json={"leads": [{**x, "reseller_id": "r1"} for x in leads]}
        )
        assert resp.json()["created"] == 40, resp.text

    def day_leads_done() -> bool:
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM leads WHERE timezone = %s AND status = 'COMPLETED'", (day,)
            ).fetchone()
        return bool(row and row[0] == 20)

    wait_until(day_leads_done, 60, what="the day leads' calls")
    with psycopg.connect(database_url) as conn:
        attempts = conn.execute(
            "SELECT l.timezone, a.started_at FROM call_attempts a JOIN leads l ON l.id = a.lead_id"
        ).fetchall()
        night_leads = conn.execute(
            "SELECT status, attempt_count, next_attempt_at FROM leads WHERE timezone = %s",
            (night,),
        ).fetchall()
    assert len(attempts) == 20
    for zone, started_at in attempts:
        local = started_at.astimezone(ZoneInfo(zone)).time()
        assert dt.time(9) <= local < dt.time(21), (zone, started_at)
    expected = next_opening(night, posted_at)
    assert night_leads == [("BACKLOG", 0, expected)] * 20
    with system.sim() as sim:
        stats = sim.get("/sim/stats").json()
    assert stats["calls_total"] == 20
    assert stats["max_calls_per_second_by_number"]["+12025550199"] <= CPS
    assert stats["cps_violations"] == 0
