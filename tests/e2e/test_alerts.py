"""Voice alerts through real processes and the simulator: sequential escalation stops at
the member who presses a key; in parallel, one acknowledgement cancels the others'
pending retries; the timeline says exactly what happened."""

from __future__ import annotations

import psycopg

from tests.e2e.harness import System, wait_until

MEMBERS = [
    {"phone": "+14155557001", "name": "Ana"},
    {"phone": "+14155557002", "name": "Ben"},
    {"phone": "+14155557003", "name": "Cy"},
    {"phone": "+14155557004", "name": "Dee"},
]


def _setup(system: System, group: str, script: dict, members: list[dict]) -> None:
    with system.sim() as sim:
        sim.post("/sim/reset").raise_for_status()
        sim.put("/sim/config", json={"ring_ms": [20, 40], "talk_ms": [20, 40]}).raise_for_status()
        sim.put("/sim/script", json=script).raise_for_status()
    with system.admin() as api:
        number = {"e164": "+12025550177", "provider": "simulator", "max_channels": 8}
        api.post("/v1/numbers", json=number)  # 409 on the second test: already there
        r = api.post(
            "/v1/alert-groups", json={"name": group, "members": members, "reseller_id": "r1"}
        )
        assert r.status_code == 201, r.text


def _fire(system: System, body: dict) -> dict:
    with system.admin() as api:
        r = api.post("/v1/alerts/fire", json={"reseller_id": "r1", "dedup_ttl_seconds": 0, **body})
        assert r.status_code == 202, r.text
        return r.json()


def _alert(system: System, alert: int) -> dict:
    with system.admin() as api:
        return api.get(f"/v1/alerts/{alert}").json()


def test_sequential_stops_at_the_member_who_presses_a_key(system: System) -> None:
    script = {
        "+14155557001": ["no_answer"],
        "+14155557002": ["answered"],
        "+14155557003": [{"outcome": "answered", "digits": "1"}],
        "+14155557004": ["answered"],
    }
    _setup(system, "oncall-seq", script, MEMBERS)
    fired = _fire(
        system,
        {"alert_id": "disk-full", "alert_group_name": "oncall-seq", "alert_message": "Disk full",
         "mode": "sequential"},
    )  # fmt: skip
    assert fired["status"] == "queued" and fired["leads_queued"] == 1
    wait_until(lambda: _alert(system, fired["alert"])["status"] != "calling", 60, what="the ack")
    alert = _alert(system, fired["alert"])
    assert alert["status"] == "acknowledged"
    assert alert["acknowledged_by"]["name"] == "Cy"
    steps = [(e["kind"], e["member_name"], e["outcome"]) for e in alert["timeline"]]
    assert steps == [
        ("fired", None, None),
        ("called", "Ana", None),
        ("call_ended", "Ana", "no_answer"),
        ("called", "Ben", None),
        ("call_ended", "Ben", "completed"),
        ("called", "Cy", None),
        ("call_ended", "Cy", "completed"),
        ("acknowledged", "Cy", None),
    ]
    with system.sim() as sim:
        calls = sim.get("/sim/calls").json()
    assert sorted(c["to"] for c in calls) == ["+14155557001", "+14155557002", "+14155557003"]
    # The whole alert's logs, every process's: no member's number appears in full.
    logs = "".join(p.read_text() for p in system.log_dir.glob("*.log"))
    assert "alert_fire" in logs and "dispatched" in logs  # the logs did record the alert
    for member in MEMBERS:
        assert member["phone"][1:] not in logs


def test_parallel_ack_cancels_the_others_pending_retries(system: System, database_url: str) -> None:
    members = MEMBERS[:3]
    script = {
        "+14155557001": [{"outcome": "answered", "digits": "9", "ring_ms": 300, "talk_ms": 200}],
        "+14155557002": [{"outcome": "no_answer", "ring_ms": 1500}],
        "+14155557003": [{"outcome": "busy", "ring_ms": 50}],
    }
    _setup(system, "oncall-par", script, members)
    fired = _fire(
        system,
        {"alert_id": "db-down", "alert_group_name": "oncall-par", "alert_message": "DB down",
         "mode": "parallel"},
    )  # fmt: skip
    assert fired["leads_queued"] == 3

    def settled() -> bool:
        with psycopg.connect(database_url) as conn:
            open_ = conn.execute(
                "SELECT count(*) FROM leads WHERE alert_ref = %s"
                " AND status IN ('BACKLOG', 'QUEUED', 'DIALING', 'IN_CALL')",
                (fired["alert"],),
            ).fetchone()
        return bool(open_ and open_[0] == 0)

    wait_until(settled, 60, what="every call of the alert to end")
    alert = _alert(system, fired["alert"])
    assert alert["status"] == "acknowledged" and alert["acknowledged_by"]["name"] == "Ana"
    with psycopg.connect(database_url) as conn:
        leads = dict(
            conn.execute(
                "SELECT phone, status FROM leads WHERE alert_ref = %s", (fired["alert"],)
            ).fetchall()
        )
    # Ben's and Cy's retries (busy, no answer) were pending or due: cancelled, never made.
    assert leads == {"+14155557001": "COMPLETED", "+14155557002": "CANCELLED",
                     "+14155557003": "CANCELLED"}  # fmt: skip
    with system.sim() as sim:
        calls = sim.get("/sim/calls").json()
    assert sorted(c["to"] for c in calls) == [m["phone"] for m in members]  # one call each
