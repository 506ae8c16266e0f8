"""Voice alerts over the API: firing (validation, both kinds of dedup, Redis down, empty
groups, sequential, flood caps, tenancy), alerts as resources, resolving, and logs that
never carry a whole phone number. The calls themselves are not placed here: these tests
check the leads a fire creates."""

from __future__ import annotations

import dataclasses
import io
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from litestar import Litestar
from litestar.testing import TestClient
from prometheus_client import REGISTRY

from dispatcher import alerts, logs
from dispatcher.logs import mask_phone
from dispatcher.runtime import Runtime
from dispatcher.settings import Settings
from tests.integration.api import auth, fields, problem
from web.app import create_app

ADMIN = auth("admin")
R1 = auth("reseller", "r1")
R2 = auth("reseller", "r2")
M1 = auth("merchant", "r1", "m1")
ALERTS1 = auth("alert_system", "r1")
ALERTS2 = auth("alert_system", "r2")

ALICE = {"phone": "+14155550101", "name": "Alice"}
BOB = {"phone": "+14155550102", "name": "Bob"}
CAROL = {"phone": "+14155550103", "name": "Carol"}
PHONES = [m["phone"] for m in (ALICE, BOB, CAROL)]


@pytest.fixture(autouse=True)
def _empty(runtime: Runtime) -> None:
    with runtime.pool.connection() as conn:
        conn.execute(
            "TRUNCATE alert_groups, alert_group_changes, alerts, alert_events, leads,"
            " lead_events, call_attempts RESTART IDENTITY CASCADE"
        )


@pytest.fixture
def alert_id(runtime: Runtime) -> Iterator[str]:
    """A fresh alert id (Redis is shared with other test runs), its keys removed after."""
    value = f"disk-full-{uuid.uuid4().hex[:8]}"
    yield value
    for reseller in ("r1", "r2"):
        runtime.redis.delete(alerts.dedup_key(runtime.settings, reseller, value))


def group(client: TestClient[Litestar], members: list[dict[str, str]], headers=R1) -> None:
    r = client.post("/v1/alert-groups", json={"name": "ops", "members": members}, headers=headers)
    assert r.status_code == 201, r.text


def fire(client: TestClient[Litestar], alert_id: str, headers=ALERTS1, **body: Any) -> Any:
    payload = {
        "alert_id": alert_id,
        "alert_group_name": "ops",
        "alert_message": "Disk full on db-1",
        **body,
    }
    return client.post("/v1/alerts/fire", json=payload, headers=headers)


def fired(client: TestClient[Litestar], alert_id: str, **body: Any) -> dict[str, Any]:
    r = fire(client, alert_id, **body)
    assert r.status_code == 202, r.text
    return r.json()


def alert_leads(rt: Runtime, alert_ref: int | None = None) -> list[dict[str, Any]]:
    with rt.pool.connection() as conn:
        return conn.execute(
            "SELECT * FROM leads WHERE alert_ref IS NOT NULL"
            " AND (%(a)s::bigint IS NULL OR alert_ref = %(a)s) ORDER BY id",
            {"a": alert_ref},
        ).fetchall()


def count(rt: Runtime, table: str) -> int:
    with rt.pool.connection() as conn:
        row = conn.execute(f"SELECT count(*) AS n FROM {table}").fetchone()
    assert row is not None
    return int(row["n"])


def key_exists(rt: Runtime, reseller: str, alert_id: str) -> bool:
    return bool(rt.redis.exists(alerts.dedup_key(rt.settings, reseller, alert_id)))


# --- firing -----------------------------------------------------------------------------


def test_parallel_fire_queues_alert_leads_for_every_member(
    client: TestClient[Litestar], runtime: Runtime, alert_id: str
) -> None:
    group(client, [ALICE, BOB])
    body = fired(client, alert_id, extra_payload={"host": "db-1"})
    assert (body["status"], body["alert_id"], body["leads_queued"]) == ("queued", alert_id, 2)
    assert body["failed"] == [] and isinstance(body["alert"], int)
    rows = alert_leads(runtime)
    assert [r["id"] for r in rows] == body["leads"]
    assert [r["phone"] for r in rows] == [ALICE["phone"], BOB["phone"]]
    for row, member in zip(rows, (ALICE, BOB), strict=True):
        assert row["status"] == "BACKLOG" and row["priority"] == 10
        assert row["execution_mode"] == "telephony_alert" and row["template"] == "alert"
        assert row["alert_ref"] == body["alert"] and row["reseller_id"] == "r1"
        assert row["payload"]["alert_message"] == "Disk full on db-1"
        assert row["payload"]["alert_id"] == alert_id and row["payload"]["host"] == "db-1"
        assert row["customer_name"] == member["name"]
    ttl = runtime.redis.ttl(alerts.dedup_key(runtime.settings, "r1", alert_id))
    assert 0 < ttl <= 300

    alert = client.get(f"/v1/alerts/{body['alert']}", headers=ALERTS1).json()
    assert (alert["status"], alert["mode"], alert["group"]) == ("calling", "parallel", "ops")
    assert (alert["message"], alert["rounds"], alert["round"]) == ("Disk full on db-1", 1, 1)
    assert alert["acknowledged_by"] is None and alert["closed_at"] is None
    timeline = alert["timeline"]
    assert [e["kind"] for e in timeline] == ["fired", "called", "called"]
    assert [e["member_name"] for e in timeline[1:]] == ["Alice", "Bob"]
    assert [e["lead_id"] for e in timeline[1:]] == body["leads"]
    assert [e["phone"] for e in timeline[1:]] == ["+*******0101", "+*******0102"]
    assert all(p not in str(alert) for p in PHONES)


def test_blank_and_invalid_fields_are_422_and_change_nothing(
    client: TestClient[Litestar], runtime: Runtime, alert_id: str
) -> None:
    group(client, [ALICE])
    blank = {"alert_id": "  ", "alert_group_name": "", "alert_message": " \t "}
    body = problem(client.post("/v1/alerts/fire", json=blank, headers=ALERTS1), 422)
    assert sorted(fields(body)) == ["alert_group_name", "alert_id", "alert_message"]
    cases = {
        "template": {"template": " "},
        "merchant_id": {"merchant_id": ""},
        "dedup_ttl_seconds": {"dedup_ttl_seconds": -1},
        "mode": {"mode": "burst"},
        "rounds": {"mode": "sequential", "rounds": 11},
        "extra_payload": {"extra_payload": {"x": "y" * 20_000}},
    }
    for name, extra in cases.items():
        assert fields(problem(fire(client, alert_id, **extra), 422)) == [name], name
    body = problem(fire(client, alert_id, template="no-such-template"), 422)
    assert fields(body) == ["template"]
    body = problem(client.post("/v1/alerts/fire", json={"alert_id": "a"}, headers=ALERTS1), 422)
    assert fields(body)  # the missing fields are named
    body = problem(fire(client, alert_id, severity="high"), 422)
    assert fields(body) == ["severity"]
    assert count(runtime, "alerts") == 0 and alert_leads(runtime) == []
    assert not key_exists(runtime, "r1", alert_id)


def test_dedup_key_is_namespaced_by_reseller(
    client: TestClient[Litestar], runtime: Runtime, alert_id: str
) -> None:
    group(client, [ALICE], headers=R1)
    group(client, [BOB], headers=R2)
    one, two = fired(client, alert_id), fired(client, alert_id, headers=ALERTS2)
    assert (one["status"], two["status"]) == ("queued", "queued")
    assert one["alert"] != two["alert"]
    assert [r["phone"] for r in alert_leads(runtime)] == [ALICE["phone"], BOB["phone"]]
    assert key_exists(runtime, "r1", alert_id) and key_exists(runtime, "r2", alert_id)
    prefix = runtime.settings.redis_prefix
    assert alerts.dedup_key(runtime.settings, "r1", alert_id) == (
        f"{prefix}:alert-dedup:r1:{alert_id}"
    )


def test_two_fires_in_the_window_make_one_set_of_calls(
    client: TestClient[Litestar], runtime: Runtime, alert_id: str
) -> None:
    group(client, [ALICE, BOB])
    first = fired(client, alert_id)
    again = fired(client, alert_id)
    assert again == {
        "status": "deduplicated",
        "alert_id": alert_id,
        "alert": first["alert"],
        "leads_queued": 0,
        "leads": [],
        "failed": [],
    }
    assert len(alert_leads(runtime)) == 2 and count(runtime, "alerts") == 1

    # Resolved, but still inside the window: the window holds (flap protection).
    assert client.post(f"/v1/alerts/{first['alert']}/resolve", headers=ALERTS1).status_code == 200
    assert fired(client, alert_id)["status"] == "deduplicated"
    assert count(runtime, "alerts") == 1


def test_fire_while_open_is_deduplicated_to_it_and_resolve_reopens(
    client: TestClient[Litestar], runtime: Runtime, alert_id: str
) -> None:
    group(client, [ALICE])
    first = fired(client, alert_id, dedup_ttl_seconds=0)
    assert first["status"] == "queued"
    again = fired(client, alert_id, dedup_ttl_seconds=0)
    assert (again["status"], again["alert"], again["leads"]) == ("deduplicated", first["alert"], [])
    assert len(alert_leads(runtime)) == 1

    client.post(f"/v1/alerts/{first['alert']}/resolve", headers=ALERTS1)
    later = fired(client, alert_id, dedup_ttl_seconds=0)
    assert later["status"] == "queued" and later["alert"] not in (None, first["alert"])
    assert [r["alert_ref"] for r in alert_leads(runtime)] == [first["alert"], later["alert"]]
    assert not key_exists(runtime, "r1", alert_id)  # ttl 0 never wrote the key


@pytest.fixture
def redis_down_client(database_url: str) -> Iterator[TestClient[Litestar]]:
    """The API over a runtime whose Redis port has nothing listening."""
    settings = Settings.load({}, database_url=database_url, redis_url="redis://127.0.0.1:1/0")
    rt = Runtime.open(settings, providers={})
    try:
        with TestClient(create_app(rt)) as c:
            yield c
    finally:
        rt.close()


def test_ttl_zero_fires_with_redis_unreachable(
    redis_down_client: TestClient[Litestar], runtime: Runtime, alert_id: str
) -> None:
    group(redis_down_client, [ALICE])
    body = fired(redis_down_client, alert_id, dedup_ttl_seconds=0)
    assert (body["status"], body["leads_queued"]) == ("queued", 1)
    assert [r["alert_ref"] for r in alert_leads(runtime)] == [body["alert"]]
    # With a window, an unreachable Redis does not stop the page either; the open alert
    # still deduplicates.
    again = fired(redis_down_client, alert_id)
    assert (again["status"], again["alert"]) == ("deduplicated", body["alert"])
    assert len(alert_leads(runtime)) == 1


def test_no_members_answers_no_members_and_releases_the_key(
    client: TestClient[Litestar], runtime: Runtime, alert_id: str
) -> None:
    group(client, [])
    body = fired(client, alert_id)
    assert (body["status"], body["alert"], body["leads"]) == ("no_members", None, [])
    assert not key_exists(runtime, "r1", alert_id)
    assert count(runtime, "alerts") == 0

    r = client.put("/v1/alert-groups/ops", json={"members": [ALICE]}, headers=R1)
    assert r.status_code == 200
    body = fired(client, alert_id)
    assert (body["status"], body["leads_queued"]) == ("queued", 1)
    assert [r["phone"] for r in alert_leads(runtime)] == [ALICE["phone"]]
    assert key_exists(runtime, "r1", alert_id)


def test_sequential_calls_only_the_first_member(
    client: TestClient[Litestar], runtime: Runtime, alert_id: str
) -> None:
    group(client, [ALICE, BOB, CAROL])
    body = fired(client, alert_id, mode="sequential", rounds=2)
    assert (body["status"], body["leads_queued"]) == ("queued", 1)
    (lead,) = alert_leads(runtime)
    assert lead["phone"] == ALICE["phone"] and lead["max_attempts"] == 1
    alert = client.get(f"/v1/alerts/{body['alert']}", headers=ALERTS1).json()
    assert (alert["mode"], alert["rounds"], alert["round"]) == ("sequential", 2, 1)
    called = [e for e in alert["timeline"] if e["kind"] == "called"]
    assert [(e["member_index"], e["lead_id"]) for e in called] == [(0, lead["id"])]


def _capped(reason: str) -> float:
    value = REGISTRY.get_sample_value("switchboard_alert_calls_capped_total", {"reason": reason})
    return value or 0.0


def test_flood_caps_are_reported_not_dropped(
    client: TestClient[Litestar], runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    tight = dataclasses.replace(
        runtime.settings, alert_calls_per_alert=2, alert_calls_per_window=3, alert_window_s=600
    )
    monkeypatch.setattr(runtime, "settings", tight)
    group(client, [ALICE, BOB, CAROL])
    ids = [f"flood-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    per_alert, per_reseller = _capped("alert_window"), _capped("reseller_window")

    first = fired(client, ids[0], dedup_ttl_seconds=0)
    assert (first["status"], first["leads_queued"]) == ("queued", 2)
    assert first["failed"] == [{"member_index": 2, "reason": "flood_cap", "cap": "alert_window"}]
    timeline = client.get(f"/v1/alerts/{first['alert']}", headers=ALERTS1).json()["timeline"]
    assert [(e["kind"], e["member_index"]) for e in timeline if e["kind"] == "capped"] == [
        ("capped", 2)
    ]

    second = fired(client, ids[1], dedup_ttl_seconds=0)  # 2 of the reseller's 3 are used
    assert second["leads_queued"] == 1
    assert [(f["member_index"], f["cap"]) for f in second["failed"]] == [
        (1, "reseller_window"),
        (2, "reseller_window"),
    ]

    third = fired(client, ids[2])  # nothing left: no alert is opened, the key is released
    assert (third["status"], third["alert"], third["leads"]) == ("failed", None, [])
    assert [f["reason"] for f in third["failed"]] == ["flood_cap"] * 3
    assert not key_exists(runtime, "r1", ids[2])
    assert count(runtime, "alerts") == 2 and len(alert_leads(runtime)) == 3
    assert _capped("alert_window") - per_alert == 1
    assert _capped("reseller_window") - per_reseller == 5


# --- auth and tenancy -------------------------------------------------------------------


def test_who_may_fire(client: TestClient[Litestar], runtime: Runtime, alert_id: str) -> None:
    group(client, [ALICE], headers=R2)  # only r2 has a group "ops"
    problem(fire(client, alert_id, headers=R2), 403)
    problem(fire(client, alert_id, headers=M1), 403)
    body = problem(fire(client, alert_id, headers=ALERTS1), 404)  # r2's group is not visible
    assert "ops" in body["detail"]
    problem(fire(client, alert_id, headers=ALERTS1, reseller_id="r2"), 403)
    assert fields(problem(fire(client, alert_id, headers=ADMIN), 422)) == ["reseller_id"]
    assert alert_leads(runtime) == [] and not key_exists(runtime, "r1", alert_id)

    ok = fired(client, alert_id, headers=ALERTS2)
    assert ok["status"] == "queued"
    problem(client.get(f"/v1/alerts/{ok['alert']}", headers=ALERTS1), 404)
    problem(client.get(f"/v1/alerts/{ok['alert']}", headers=R1), 404)
    problem(client.post(f"/v1/alerts/{ok['alert']}/resolve", headers=R1), 404)
    problem(client.get(f"/v1/alerts/{ok['alert']}", headers=M1), 403)
    assert client.get("/v1/alerts", headers=R1).json()["items"] == []
    assert client.get(f"/v1/alerts/{ok['alert']}", headers=R2).status_code == 200
    assert client.get(f"/v1/alerts/{ok['alert']}", headers=ADMIN).status_code == 200
    by_admin = fired(client, f"{alert_id}-admin", headers=ADMIN, reseller_id="r2")
    assert by_admin["status"] == "queued"
    client.post(f"/v1/alerts/{by_admin['alert']}/resolve", headers=ADMIN)
    runtime.redis.delete(alerts.dedup_key(runtime.settings, "r2", f"{alert_id}-admin"))


# --- alerts as resources ----------------------------------------------------------------


def test_resolve_cancels_pending_calls(
    client: TestClient[Litestar], runtime: Runtime, alert_id: str
) -> None:
    group(client, [ALICE, BOB])
    body = fired(client, alert_id)
    r = client.post(f"/v1/alerts/{body['alert']}/resolve", headers=R1)
    assert r.status_code == 200, r.text
    alert = r.json()
    assert alert["status"] == "resolved" and alert["closed_at"] is not None
    assert [row["status"] for row in alert_leads(runtime)] == ["CANCELLED", "CANCELLED"]
    kinds = [e["kind"] for e in alert["timeline"]]
    assert kinds == ["fired", "called", "called", "cancelled", "cancelled", "resolved"]
    assert alert["timeline"][-1]["detail"]["cancelled_leads"] == body["leads"]
    problem(client.post(f"/v1/alerts/{body['alert']}/resolve", headers=R1), 409)
    problem(client.post("/v1/alerts/999999/resolve", headers=R1), 404)


def test_list_filters_by_status_newest_first_with_cursor(
    client: TestClient[Litestar], runtime: Runtime
) -> None:
    group(client, [ALICE])
    refs = [fired(client, f"a-{i}-{uuid.uuid4().hex[:6]}", dedup_ttl_seconds=0) for i in range(3)]
    client.post(f"/v1/alerts/{refs[0]['alert']}/resolve", headers=R1)
    page = client.get("/v1/alerts?limit=2", headers=R1).json()
    assert [a["id"] for a in page["items"]] == [refs[2]["alert"], refs[1]["alert"]]
    rest = client.get(f"/v1/alerts?limit=2&cursor={page['next_cursor']}", headers=R1).json()
    assert [a["id"] for a in rest["items"]] == [refs[0]["alert"]] and rest["next_cursor"] is None
    calling = client.get("/v1/alerts?status=calling", headers=ALERTS1).json()["items"]
    assert [a["id"] for a in calling] == [refs[2]["alert"], refs[1]["alert"]]
    resolved = client.get("/v1/alerts?status=resolved", headers=R1).json()["items"]
    assert [a["id"] for a in resolved] == [refs[0]["alert"]]
    assert fields(problem(client.get("/v1/alerts?status=open", headers=R1), 422)) == ["status"]


# --- logs -------------------------------------------------------------------------------


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """Switchboard's real log setup (`logs.configure`) writing into a buffer for one test,
    then the previous setup back."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("DEBUG", json=True)
    buffer = io.StringIO()
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**saved)


def test_logs_of_a_whole_fire_hold_no_full_phone_number(
    client: TestClient[Litestar],
    runtime: Runtime,
    alert_id: str,
    json_logs: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        runtime, "settings", dataclasses.replace(runtime.settings, alert_calls_per_alert=2)
    )
    group(client, [ALICE, BOB, CAROL])
    body = fired(client, alert_id, extra_payload={"runbook": "https://example.com/db"})
    assert body["leads_queued"] == 2 and len(body["failed"]) == 1
    fired(client, alert_id)  # deduplicated
    client.post(f"/v1/alerts/{body['alert']}/resolve", headers=ALERTS1)
    text = json_logs.getvalue()
    assert '"event": "alert_fire"' in text and alert_id in text  # the logs were captured
    assert '"alert_resolved"' in text and '"alert_group_created"' in text
    for phone in PHONES:
        assert phone.removeprefix("+") not in text, f"{mask_phone(phone)} logged in full"
