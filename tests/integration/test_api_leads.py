"""The leads API over a real PostgreSQL and Redis: validation, idempotency, bulk,
pagination, cancel and tenancy. Every rejected request must leave no row behind."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from dispatcher import leads, lifecycle
from dispatcher.lifecycle import NewAttempt
from dispatcher.runtime import Runtime
from tests.integration.api import auth, fields, problem

PHONE = "+14155550123"
NOW = dt.datetime.now(dt.UTC)


ADMIN = auth("admin")
R1 = auth("reseller", "r1")
R2 = auth("reseller", "r2")


@pytest.fixture(scope="module")
def runtime(runtime: Runtime) -> Runtime:
    with runtime.pool.connection() as conn:  # calling hours have tests of their own
        conn.execute("UPDATE templates SET calling_window = NULL WHERE name = 'default'")
    return runtime


def counts(rt: Runtime) -> tuple[int, int]:
    with rt.pool.connection() as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM leads) AS leads,"
            " (SELECT count(*) FROM lead_events) AS events"
        ).fetchone()
    assert row is not None
    return row["leads"], row["events"]


@contextlib.contextmanager
def unchanged(rt: Runtime) -> Iterator[None]:
    before = counts(rt)
    yield
    assert counts(rt) == before, "a rejected request changed leads or lead_events"


def phone(n: int) -> str:
    """Distinct valid numbers (San Francisco 555 block)."""
    return f"+1415555{n:04d}"


def at(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


# --- create -----------------------------------------------------------------------------


def test_create_normalises_defaults_and_infers_the_time_zone(
    client: TestClient[Litestar], runtime: Runtime
) -> None:
    before = counts(runtime)
    body = {"phone": f" {PHONE} ", "customer_name": "  ", "template": "", "payload": {"o": 7}}
    r = client.post("/v1/leads", json=body, headers=R1)
    assert r.status_code == 201, r.text
    lead = r.json()
    assert {k: lead[k] for k in ("phone", "reseller_id", "template", "execution_mode")} == {
        "phone": PHONE,
        "reseller_id": "r1",
        "template": "default",  # blank counts as missing
        "execution_mode": "telephony",
    }
    assert lead["customer_name"] is None and lead["payload"] == {"o": 7}
    assert (lead["priority"], lead["max_attempts"], lead["timezone"]) == (
        5,
        None,
        "America/Los_Angeles",
    )
    assert (lead["status"], lead["attempt_count"], lead["attempts"]) == ("BACKLOG", 0, [])
    assert abs(at(lead["next_attempt_at"]) - dt.datetime.now(dt.UTC)) < dt.timedelta(seconds=30)
    assert counts(runtime) == (before[0] + 1, before[1] + 1)
    with runtime.pool.connection() as conn:
        row = conn.execute(
            "SELECT from_status, to_status, reason FROM lead_events WHERE lead_id = %s",
            (lead["id"],),
        ).fetchone()
    assert row == {"from_status": None, "to_status": "BACKLOG", "reason": "created"}


def test_not_before_time_zone_and_template_mode_are_kept(client: TestClient[Litestar]) -> None:
    not_before = (NOW + dt.timedelta(days=1)).replace(microsecond=0)
    body = {
        "phone": "+442071838750",
        "template": "alert",
        "not_before": not_before.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat(),
        "expires_at": (not_before + dt.timedelta(days=1)).isoformat().replace("+00:00", "Z"),
        "timezone": "Europe/Paris",
        "max_attempts": 5,
        "priority": 9,
        "merchant_id": "m1",
        "customer_name": "Ada",
    }
    r = client.post("/v1/leads", json=body, headers=R1)
    assert r.status_code == 201, r.text
    lead = r.json()
    assert at(lead["not_before"]) == not_before == at(lead["next_attempt_at"])
    assert at(lead["expires_at"]) == not_before + dt.timedelta(days=1)
    assert lead["timezone"] == "Europe/Paris"
    assert lead["execution_mode"] == "telephony_alert"
    assert (lead["max_attempts"], lead["priority"], lead["merchant_id"]) == (5, 9, "m1")


def test_time_zone_is_null_when_the_number_spans_several(client: TestClient[Litestar]) -> None:
    r = client.post("/v1/leads", json={"phone": "+79161234567"}, headers=R1)
    assert r.status_code == 201, r.text
    assert r.json()["timezone"] is None


def test_payload_limit_is_16_kib_encoded(client: TestClient[Litestar], runtime: Runtime) -> None:
    # {"x":"…"} is 8 bytes plus the string: 16,384 bytes in all is the largest allowed.
    ok = client.post("/v1/leads", json={"phone": PHONE, "payload": {"x": "a" * 16376}}, headers=R1)
    assert ok.status_code == 201, ok.text
    with unchanged(runtime):
        big = client.post(
            "/v1/leads", json={"phone": PHONE, "payload": {"x": "a" * 16377}}, headers=R1
        )
    assert fields(problem(big, 422)) == ["payload"]


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("not E.164", {"phone": "4155550123"}, "phone"),
    ("not a valid number", {"phone": "+1415555012"}, "phone"),
    ("no phone", {}, "phone"),
    ("blank phone", {"phone": "   "}, "phone"),
    ("unknown template", {"phone": PHONE, "template": "nope"}, "template"),
    ("unknown field", {"phone": PHONE, "colour": "red"}, "colour"),
    ("payload not an object", {"phone": PHONE, "payload": [1]}, "payload"),
    ("priority 0", {"phone": PHONE, "priority": 0}, "priority"),
    ("priority 11", {"phone": PHONE, "priority": 11}, "priority"),
    ("priority not a number", {"phone": PHONE, "priority": "high"}, "priority"),
    ("max_attempts 21", {"phone": PHONE, "max_attempts": 21}, "max_attempts"),
    ("max_attempts 0", {"phone": PHONE, "max_attempts": 0}, "max_attempts"),
    ("naive not_before", {"phone": PHONE, "not_before": "2030-01-01T09:00:00"}, "not_before"),
    ("naive expires_at", {"phone": PHONE, "expires_at": "2030-01-01T09:00:00"}, "expires_at"),
    ("not a time", {"phone": PHONE, "not_before": "tomorrow"}, "not_before"),
    ("expired", {"phone": PHONE, "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
    (
        "expires before not_before",
        {"phone": PHONE, "not_before": "2030-01-02T00:00Z", "expires_at": "2030-01-01T00:00Z"},
        "expires_at",
    ),
    ("unknown time zone", {"phone": PHONE, "timezone": "Mars/Olympus_Mons"}, "timezone"),
    ("long customer_name", {"phone": PHONE, "customer_name": "x" * 201}, "customer_name"),
    ("long idempotency_key", {"phone": PHONE, "idempotency_key": "k" * 201}, "idempotency_key"),
]


@pytest.mark.parametrize(("case", "body", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_lead_is_422_naming_the_field_and_stores_nothing(
    client: TestClient[Litestar], runtime: Runtime, case: str, body: dict[str, Any], field: str
) -> None:
    with unchanged(runtime):
        r = client.post("/v1/leads", json=body, headers=R1)
    assert field in fields(problem(r, 422)), case


def test_every_bad_field_is_named_at_once(client: TestClient[Litestar], runtime: Runtime) -> None:
    body = {"phone": "x", "template": "nope", "not_before": "2030-01-01T09:00:00"}
    with unchanged(runtime):
        r = client.post("/v1/leads", json=body, headers=R1)
    assert sorted(fields(problem(r, 422))) == ["not_before", "phone", "template"]


def test_admin_must_name_the_reseller(client: TestClient[Litestar], runtime: Runtime) -> None:
    with unchanged(runtime):
        r = client.post("/v1/leads", json={"phone": PHONE}, headers=ADMIN)
    assert fields(problem(r, 422)) == ["reseller_id"]
    r = client.post("/v1/leads", json={"phone": PHONE, "reseller_id": "r7"}, headers=ADMIN)
    assert r.status_code == 201 and r.json()["reseller_id"] == "r7"


def test_another_tenant_in_the_body_is_403(client: TestClient[Litestar], runtime: Runtime) -> None:
    m1 = auth("merchant", "r1", "m1")
    with unchanged(runtime):
        problem(
            client.post("/v1/leads", json={"phone": PHONE, "reseller_id": "r2"}, headers=R1), 403
        )
        problem(
            client.post("/v1/leads", json={"phone": PHONE, "merchant_id": "m2"}, headers=m1), 403
        )
        problem(
            client.post("/v1/leads", json={"phone": PHONE}, headers=auth("alert_system", "r1")), 403
        )
    r = client.post("/v1/leads", json={"phone": PHONE, "reseller_id": "r1"}, headers=R1)
    assert r.status_code == 201 and r.json()["reseller_id"] == "r1"
    r = client.post("/v1/leads", json={"phone": PHONE}, headers=m1)
    assert r.status_code == 201 and (r.json()["reseller_id"], r.json()["merchant_id"]) == (
        "r1",
        "m1",
    )


# --- idempotency ------------------------------------------------------------------------


def test_idempotency_key_replays_with_200_and_conflicts_with_409(
    client: TestClient[Litestar], runtime: Runtime
) -> None:
    body = {"phone": PHONE, "idempotency_key": "order-1", "customer_name": "Ada"}
    first = client.post("/v1/leads", json=body, headers=R1)
    assert first.status_code == 201, first.text
    with unchanged(runtime):
        again = client.post("/v1/leads", json=body, headers=R1)
        # The same lead written differently (an explicit default, a formatted time zone).
        same = client.post(
            "/v1/leads", json={**body, "priority": 5, "template": "default"}, headers=R1
        )
        other = client.post("/v1/leads", json={**body, "customer_name": "Bob"}, headers=R1)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
    assert "idempotency_key" in problem(other, 409)["detail"]
    # Keys are per reseller: r2 may use the same one.
    theirs = client.post("/v1/leads", json=body, headers=R2)
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]


def test_a_replay_after_expiry_still_returns_the_first_lead(runtime: Runtime) -> None:
    item = {
        "phone": PHONE,
        "reseller_id": "r1",
        "idempotency_key": "expiring",
        "expires_at": NOW + dt.timedelta(hours=1),
    }
    with runtime.pool.connection() as conn, conn.transaction():
        lead, created = leads.create(conn, item, now=NOW)
        replay, again = leads.create(conn, item, now=NOW + dt.timedelta(days=1))
    assert (created, again, replay["id"]) == (True, False, lead["id"])


# --- do-not-call ------------------------------------------------------------------------


def test_do_not_call_at_ingest_skips_the_lead(
    client: TestClient[Litestar], runtime: Runtime
) -> None:
    listed, r2_only = phone(9001), phone(9002)
    with runtime.pool.connection() as conn:
        conn.execute(
            "INSERT INTO dnc (phone, reseller_id) VALUES (%s, NULL), (%s, 'r2')", (listed, r2_only)
        )
    r = client.post("/v1/leads", json={"phone": listed}, headers=R1)
    assert r.status_code == 201
    assert (r.json()["status"], r.json()["status_reason"]) == ("SKIPPED", "do_not_call")
    mine = client.post("/v1/leads", json={"phone": r2_only}, headers=R1).json()
    theirs = client.post("/v1/leads", json={"phone": r2_only}, headers=R2).json()
    assert (mine["status"], theirs["status"]) == ("BACKLOG", "SKIPPED")


# --- bulk -------------------------------------------------------------------------------


def test_bulk_stores_valid_items_and_reports_the_others(
    client: TestClient[Litestar], runtime: Runtime
) -> None:
    items: list[Any] = [
        {"phone": phone(100)},  # 0 ok
        {"phone": "nope"},  # 1 bad phone
        {"phone": phone(101), "zzz": 1},  # 2 unknown field
        {"phone": phone(102), "idempotency_key": "bulk-1"},  # 3 ok
        {"phone": phone(102), "idempotency_key": "bulk-1"},  # 4 duplicate of 3
        {"phone": phone(103), "idempotency_key": "bulk-1"},  # 5 key reused, other body
        "not an object",  # 6
        {"phone": phone(104), "reseller_id": "r2"},  # 7 another tenant
        {"phone": phone(105), "priority": 11},  # 8 out of range
        {"phone": phone(106), "merchant_id": "m9", "template": "alert"},  # 9 ok
    ]
    leads_before, _ = counts(runtime)
    r = client.post("/v1/leads/bulk", json={"leads": items}, headers=R1)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["created"], out["duplicates"]) == (3, 1)
    ids = out["ids"]
    assert [i for i, v in enumerate(ids) if v is None] == [1, 2, 5, 6, 7, 8]
    assert ids[4] == ids[3] and len({ids[0], ids[3], ids[9]}) == 3
    errors = {e["index"]: e for e in out["errors"]}
    assert {i: [f["field"] for f in e["errors"]] for i, e in errors.items()} == {
        1: ["phone"],
        2: ["zzz"],
        5: ["idempotency_key"],
        6: ["body"],
        7: ["reseller_id"],
        8: ["priority"],
    }
    assert all(e["detail"] for e in out["errors"])
    assert counts(runtime)[0] == leads_before + 3
    with runtime.pool.connection() as conn:
        rows = conn.execute(
            "SELECT id, reseller_id, phone, execution_mode FROM leads WHERE id = ANY(%s)"
            " ORDER BY id",
            ([ids[0], ids[3], ids[9]],),
        ).fetchall()
    assert [(r["reseller_id"], r["phone"], r["execution_mode"]) for r in rows] == [
        ("r1", phone(100), "telephony"),
        ("r1", phone(102), "telephony"),
        ("r1", phone(106), "telephony_alert"),
    ]
    again = client.post("/v1/leads/bulk", json={"leads": items}, headers=R1).json()
    assert (again["created"], again["duplicates"]) == (2, 2)
    assert again["ids"][3] == ids[3]


def test_bulk_over_10000_items_is_422_and_stores_nothing(
    client: TestClient[Litestar], runtime: Runtime
) -> None:
    with unchanged(runtime):
        r = client.post("/v1/leads/bulk", json={"leads": [{"phone": PHONE}] * 10_001}, headers=R1)
    assert fields(problem(r, 422)) == ["leads"]


def test_bulk_of_10000_items_is_accepted(client: TestClient[Litestar], runtime: Runtime) -> None:
    items = [{"phone": phone(n), "reseller_id": "bulk10k"} for n in range(10_000)]
    r = client.post("/v1/leads/bulk", json={"leads": items}, headers=ADMIN)
    assert r.status_code == 200, r.text[:500]
    assert (r.json()["created"], r.json()["errors"]) == (10_000, [])
    with runtime.pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) AS n, count(DISTINCT phone) AS phones FROM leads"
            " WHERE reseller_id = 'bulk10k'"
        ).fetchone()
    assert row == {"n": 10_000, "phones": 10_000}


# --- read, list -------------------------------------------------------------------------


@pytest.fixture()
def in_call_lead(client: TestClient[Litestar], runtime: Runtime) -> tuple[int, uuid.UUID]:
    """A lead of r1 with one attempt in progress (claimed, dialed, accepted by the
    provider). Priority 10 is used by no other test here, so the claim picks this one."""
    lead_id = client.post("/v1/leads", json={"phone": PHONE, "priority": 10}, headers=R1).json()[
        "id"
    ]
    attempt_id = uuid.uuid4()
    with runtime.pool.connection() as conn, conn.transaction():
        number = conn.execute(
            "INSERT INTO outbound_numbers (e164, max_channels) VALUES (%s, 1)"
            " ON CONFLICT (e164) DO UPDATE SET max_channels = 1 RETURNING id",
            ("+14155550100",),
        ).fetchone()
        assert number is not None
        [claimed] = lifecycle.claim(conn, "r1", 1, lease_s=30)
        assert claimed.lead_id == lead_id
        attempt = NewAttempt(attempt_id, number["id"], "+14155550100", "simulator")
        assert lifecycle.start_dialing(conn, lead_id, claimed.fence, attempt) is not None
        assert lifecycle.mark_in_call(conn, lead_id, attempt_id, "CALL-1")
    return lead_id, attempt_id


def test_read_returns_the_lead_with_its_attempts(
    client: TestClient[Litestar], in_call_lead: tuple[int, uuid.UUID]
) -> None:
    lead_id, attempt_id = in_call_lead
    r = client.get(f"/v1/leads/{lead_id}", headers=R1)
    assert r.status_code == 200, r.text
    lead = r.json()
    assert (lead["status"], lead["attempt_count"]) == ("IN_CALL", 1)
    [attempt] = lead["attempts"]
    assert {k: attempt[k] for k in ("id", "attempt_no", "number", "provider")} == {
        "id": str(attempt_id),
        "attempt_no": 1,
        "number": "+14155550100",
        "provider": "simulator",
    }
    assert (attempt["provider_call_id"], attempt["outcome"], attempt["ended_at"]) == (
        "CALL-1",
        None,
        None,
    )
    assert at(attempt["started_at"]) <= dt.datetime.now(dt.UTC)
    problem(client.get("/v1/leads/999999999", headers=R1), 404)


def test_pagination_walks_every_lead_once_newest_first(
    client: TestClient[Litestar], runtime: Runtime
) -> None:
    pager = auth("reseller", "pager")
    items = [{"phone": phone(200 + n)} for n in range(23)]
    created = client.post("/v1/leads/bulk", json={"leads": items}, headers=pager).json()["ids"]
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/leads", params=params, headers=pager)
        assert page.status_code == 200, page.text
        seen += [lead["id"] for lead in page.json()["items"]]
        pages += 1
        if pages == 2:  # a lead added mid-walk is newer: it never shows up in later pages
            client.post("/v1/leads", json={"phone": phone(299)}, headers=pager)
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    assert seen == sorted(created, reverse=True)


def test_list_filters_and_rejects_bad_parameters(
    client: TestClient[Litestar], runtime: Runtime
) -> None:
    f = auth("reseller", "filters")
    ids = client.post(
        "/v1/leads/bulk",
        json={
            "leads": [
                {"phone": phone(300)},
                {"phone": phone(301), "template": "alert"},
                {"phone": phone(302)},
            ]
        },
        headers=f,
    ).json()["ids"]
    assert client.delete(f"/v1/leads/{ids[2]}", headers=f).status_code == 200

    def listed(**params: Any) -> list[int]:
        r = client.get("/v1/leads", params=params, headers=f)
        assert r.status_code == 200, r.text
        return [lead["id"] for lead in r.json()["items"]]

    assert listed() == ids[::-1]
    assert listed(status="CANCELLED") == [ids[2]]
    assert listed(status="BACKLOG", template="alert") == [ids[1]]
    assert listed(phone=phone(300)) == [ids[0]]
    assert listed(phone=phone(399)) == []
    for params, field in (
        ({"limit": 501}, "limit"),
        ({"limit": 0}, "limit"),
        ({"status": "DONE"}, "status"),
        ({"phone": "555"}, "phone"),
        ({"cursor": "bm90LWEtY3Vyc29y"}, "cursor"),
    ):
        assert fields(problem(client.get("/v1/leads", params=params, headers=f), 422)) == [field]


# --- cancel -----------------------------------------------------------------------------


def test_cancel_then_cancel_again_is_409(client: TestClient[Litestar], runtime: Runtime) -> None:
    lead_id = client.post("/v1/leads", json={"phone": PHONE}, headers=R1).json()["id"]
    r = client.delete(f"/v1/leads/{lead_id}", headers=R1)
    assert r.status_code == 200, r.text
    assert (r.json()["id"], r.json()["status"]) == (lead_id, "CANCELLED")
    with runtime.pool.connection() as conn:
        last = conn.execute(
            "SELECT from_status, to_status FROM lead_events WHERE lead_id = %s"
            " ORDER BY id DESC LIMIT 1",
            (lead_id,),
        ).fetchone()
    assert last == {"from_status": "BACKLOG", "to_status": "CANCELLED"}
    with unchanged(runtime):
        again = client.delete(f"/v1/leads/{lead_id}", headers=R1)
    assert problem(again, 409)["detail"] == "lead is already CANCELLED"


def test_a_lead_in_a_call_cannot_be_cancelled(
    client: TestClient[Litestar], runtime: Runtime, in_call_lead: tuple[int, uuid.UUID]
) -> None:
    lead_id, _ = in_call_lead
    with unchanged(runtime):
        r = client.delete(f"/v1/leads/{lead_id}", headers=R1)
    assert problem(r, 409)["detail"] == "a call is in progress; it cannot be cancelled"
    assert client.get(f"/v1/leads/{lead_id}", headers=R1).json()["status"] == "IN_CALL"


# --- tenancy ----------------------------------------------------------------------------


def test_another_resellers_lead_is_404(client: TestClient[Litestar], runtime: Runtime) -> None:
    lead_id = client.post("/v1/leads", json={"phone": PHONE}, headers=R1).json()["id"]
    problem(client.get(f"/v1/leads/{lead_id}", headers=R2), 404)
    with unchanged(runtime):
        problem(client.delete(f"/v1/leads/{lead_id}", headers=R2), 404)
    assert client.get(f"/v1/leads/{lead_id}", headers=R1).json()["status"] == "BACKLOG"
    r2_ids = [lead["id"] for lead in client.get("/v1/leads", headers=R2).json()["items"]]
    assert r2_ids and lead_id not in r2_ids
    problem(client.get("/v1/leads", params={"reseller_id": "r1"}, headers=R2), 403)
    # An admin sees any lead and may narrow a listing to one reseller.
    assert client.get(f"/v1/leads/{lead_id}", headers=ADMIN).status_code == 200
    only_r2 = client.get("/v1/leads", params={"reseller_id": "r2"}, headers=ADMIN).json()["items"]
    assert only_r2 and {lead["reseller_id"] for lead in only_r2} == {"r2"}


def test_a_merchant_sees_only_its_own_leads(client: TestClient[Litestar]) -> None:
    m1, m2 = auth("merchant", "r1", "m1"), auth("merchant", "r1", "m2")
    lead_id = client.post("/v1/leads", json={"phone": PHONE}, headers=m1).json()["id"]
    assert client.get(f"/v1/leads/{lead_id}", headers=m1).status_code == 200
    assert client.get(f"/v1/leads/{lead_id}", headers=R1).status_code == 200
    problem(client.get(f"/v1/leads/{lead_id}", headers=m2), 404)
    problem(client.delete(f"/v1/leads/{lead_id}", headers=m2), 404)
    mine = client.get("/v1/leads", headers=m1).json()["items"]
    assert lead_id in [lead["id"] for lead in mine]
    assert {lead["merchant_id"] for lead in mine} == {"m1"}
    assert lead_id not in [
        lead["id"] for lead in client.get("/v1/leads", headers=m2).json()["items"]
    ]
