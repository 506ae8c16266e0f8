"""Do-not-call lists over the API: who may list what, validation, and the leads it skips."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from dispatcher import dnc, lifecycle
from dispatcher.lifecycle import NewAttempt, NewLead
from dispatcher.runtime import Runtime
from tests.integration.api import auth, fields, problem

ADMIN = auth("admin")
R1 = auth("reseller", "r1")
R2 = auth("reseller", "r2")
M1 = auth("merchant", "r1", "m1")
ALERTS = auth("alert_system", "r1")

P1, P2, P3 = "+14155550101", "+14155550102", "+14155550103"


@pytest.fixture(autouse=True)
def _empty(runtime: Runtime) -> None:
    """Each test starts with no lists, leads or numbers."""
    with runtime.pool.connection() as conn:
        conn.execute(
            "TRUNCATE dnc, leads, lead_events, call_attempts, outbound_numbers"
            " RESTART IDENTITY CASCADE"
        )


def snapshot(rt: Runtime) -> tuple[list[dict[str, Any]], ...]:
    with rt.pool.connection() as conn:
        return (
            conn.execute("SELECT * FROM dnc ORDER BY id").fetchall(),
            conn.execute("SELECT id, status FROM leads ORDER BY id").fetchall(),
            conn.execute("SELECT count(*) AS n FROM lead_events").fetchall(),
        )


@contextlib.contextmanager
def unchanged(rt: Runtime) -> Iterator[None]:
    before = snapshot(rt)
    yield
    assert snapshot(rt) == before, "a rejected request changed the lists or the leads"


def lead(client: TestClient[Litestar], phone: str, reseller: str = "r1") -> int:
    r = client.post("/v1/leads", json={"phone": phone, "reseller_id": reseller}, headers=ADMIN)
    assert r.status_code == 201 and r.json()["status"] == "BACKLOG", r.text
    return int(r.json()["id"])


def statuses(rt: Runtime, *ids: int) -> list[str]:
    with rt.pool.connection() as conn:
        rows = conn.execute("SELECT id, status FROM leads WHERE id = ANY(%s)", (list(ids),))
        by_id = {r["id"]: r["status"] for r in rows.fetchall()}
    return [by_id[i] for i in ids]


def dnc_events(rt: Runtime, lead_id: int) -> list[tuple[str | None, str]]:
    with rt.pool.connection() as conn:
        rows = conn.execute(
            "SELECT from_status, to_status FROM lead_events"
            " WHERE lead_id = %s AND reason = 'do_not_call' ORDER BY id",
            (lead_id,),
        ).fetchall()
    return [(r["from_status"], r["to_status"]) for r in rows]


def entries(rt: Runtime) -> set[tuple[str, str | None]]:
    with rt.pool.connection() as conn:
        rows = conn.execute("SELECT phone, reseller_id FROM dnc").fetchall()
    return {(r["phone"], r["reseller_id"]) for r in rows}


def listed(rt: Runtime, phone: str, reseller: str) -> bool:
    with rt.pool.connection() as conn:
        return dnc.is_listed(conn, phone, reseller)


# --- adding and its effect on leads -----------------------------------------------------


def test_global_entry_skips_waiting_leads_of_every_reseller(
    client: TestClient[Litestar], runtime: Runtime
) -> None:
    mine, theirs, other_phone = lead(client, P1, "r1"), lead(client, P1, "r2"), lead(client, P2)

    r = client.post("/v1/dnc", json={"phones": [P1]}, headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["added"], body["already"]) == (1, 0)
    assert sorted(body["skipped_leads"]) == sorted([mine, theirs])
    assert statuses(runtime, mine, theirs, other_phone) == ["SKIPPED", "SKIPPED", "BACKLOG"]
    assert dnc_events(runtime, mine) == [("BACKLOG", "SKIPPED")]
    assert dnc_events(runtime, other_phone) == []
    read = client.get(f"/v1/leads/{theirs}", headers=R2).json()
    assert (read["status"], read["status_reason"]) == ("SKIPPED", "do_not_call")
    assert entries(runtime) == {(P1, None)}
    assert listed(runtime, P1, "r1") and listed(runtime, P1, "anyone")
    assert not listed(runtime, P2, "r1")

    # Idempotent: a re-add (spaces trimmed, repeated in one request) stores nothing new.
    r = client.post("/v1/dnc", json={"phones": [f" {P1} ", P1]}, headers=ADMIN)
    assert r.json() == {"added": 0, "already": 2, "skipped_leads": []}
    r = client.post("/v1/dnc", json={"phones": [P1, P2], "reseller_id": None}, headers=ADMIN)
    assert r.json() == {"added": 1, "already": 1, "skipped_leads": [other_phone]}
    assert entries(runtime) == {(P1, None), (P2, None)}


def test_reseller_entry_skips_only_that_resellers_leads(
    client: TestClient[Litestar], runtime: Runtime
) -> None:
    mine, theirs = lead(client, P1, "r1"), lead(client, P1, "r2")

    r = client.post("/v1/dnc", json={"phones": [P1]}, headers=R1)
    assert r.status_code == 200, r.text
    assert r.json() == {"added": 1, "already": 0, "skipped_leads": [mine]}
    assert statuses(runtime, mine, theirs) == ["SKIPPED", "BACKLOG"]
    assert dnc_events(runtime, theirs) == []
    assert listed(runtime, P1, "r1") and not listed(runtime, P1, "r2")

    # The same number on r2's list is another entry; r1's re-add is `already`.
    assert client.post("/v1/dnc", json={"phones": [P1]}, headers=R1).json()["already"] == 1
    r = client.post("/v1/dnc", json={"phones": [P1], "reseller_id": "r2"}, headers=ADMIN)
    assert r.json() == {"added": 1, "already": 0, "skipped_leads": [theirs]}
    # A merchant writes its reseller's list; naming its own reseller is fine.
    r = client.post("/v1/dnc", json={"phones": [P2], "reseller_id": "r1"}, headers=M1)
    assert r.status_code == 200 and r.json()["added"] == 1
    assert entries(runtime) == {(P1, "r1"), (P1, "r2"), (P2, "r1")}


def test_claimed_and_calling_leads_are_left_to_the_dispatcher(
    client: TestClient[Litestar], runtime: Runtime
) -> None:
    number = client.post(
        "/v1/numbers", json={"e164": "+15005550006", "max_channels": 2}, headers=ADMIN
    )
    assert number.status_code == 201, number.text
    now = dt.datetime.now(dt.UTC)
    with runtime.pool.connection() as conn:
        queued, calling = lifecycle.create_leads(
            conn, [NewLead("r1", P1, "default", now, priority=10) for _ in range(2)]
        )
        claimed = {c.lead_id: c for c in lifecycle.claim(conn, "r1", 2, lease_s=60)}
        assert set(claimed) == {queued, calling}
        attempt = NewAttempt(uuid.uuid4(), number.json()["id"], "+15005550006", "simulator")
        assert lifecycle.start_dialing(conn, calling, claimed[calling].fence, attempt)
        assert lifecycle.mark_in_call(conn, calling, attempt.id, "call-1")
    waiting = lead(client, P1)

    r = client.post("/v1/dnc", json={"phones": [P1]}, headers=ADMIN)
    assert r.json()["skipped_leads"] == [waiting]
    assert statuses(runtime, queued, calling, waiting) == ["QUEUED", "IN_CALL", "SKIPPED"]
    assert dnc_events(runtime, queued) == [] and dnc_events(runtime, calling) == []
    # What the dispatcher asks before dialing the queued lead.
    assert listed(runtime, P1, "r1")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"phones": [P1, "4155550102", "+1415", P3]}, ["phones[1]", "phones[2]"]),
        ({"phones": [P1, "+19995550123"]}, ["phones[1]"]),
        ({"phones": [P1, 4155550102]}, ["phones[1]"]),
        ({"phones": []}, ["phones"]),
        ({"phones": P1}, ["phones"]),
        ({}, ["phones"]),
        ({"phones": [P1], "colour": "red"}, ["colour"]),
    ],
)
def test_bad_phones_are_422_and_store_nothing(
    client: TestClient[Litestar], runtime: Runtime, body: dict[str, Any], expected: list[str]
) -> None:
    waiting = lead(client, P1)
    with unchanged(runtime):
        out = problem(client.post("/v1/dnc", json=body, headers=ADMIN), 422)
    assert fields(out) == expected
    assert statuses(runtime, waiting) == ["BACKLOG"] and entries(runtime) == set()


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        ({"phones": [P1], "reseller_id": "r2"}, R1, 403),
        ({"phones": [P1], "reseller_id": None}, R1, 403),  # the global list is admin's
        ({"phones": [P1], "reseller_id": "r2"}, M1, 403),
        ({"phones": [P1]}, ALERTS, 403),
        ({"phones": [P1]}, {}, 401),
        ({"phones": [P1]}, {"Authorization": "Bearer not-a-token"}, 401),
    ],
)
def test_adding_to_a_list_that_is_not_yours_changes_nothing(
    client: TestClient[Litestar],
    runtime: Runtime,
    body: dict[str, Any],
    headers: dict[str, str],
    status: int,
) -> None:
    waiting = lead(client, P1, "r2")
    with unchanged(runtime):
        problem(client.post("/v1/dnc", json=body, headers=headers), status)
    assert statuses(runtime, waiting) == ["BACKLOG"]


# --- reading ----------------------------------------------------------------------------


def test_who_sees_which_entries(client: TestClient[Litestar]) -> None:
    for body in (
        {"phones": [P1]},
        {"phones": [P2], "reseller_id": "r1"},
        {"phones": [P3], "reseller_id": "r2"},
    ):
        assert client.post("/v1/dnc", json=body, headers=ADMIN).status_code == 200

    def seen(headers: dict[str, str], query: str = "") -> list[tuple[str, str | None]]:
        r = client.get(f"/v1/dnc{query}", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["next_cursor"] is None
        for item in r.json()["items"]:
            assert set(item) == {"phone", "reseller_id", "created_at"}
            dt.datetime.fromisoformat(item["created_at"])
        return [(i["phone"], i["reseller_id"]) for i in r.json()["items"]]

    everything = [(P3, "r2"), (P2, "r1"), (P1, None)]  # newest first
    assert seen(ADMIN) == everything
    assert seen(R1) == [(P2, "r1"), (P1, None)]
    assert seen(M1) == [(P2, "r1"), (P1, None)]
    assert seen(R2) == [(P3, "r2"), (P1, None)]
    assert seen(ADMIN, "?reseller_id=r2") == [(P3, "r2"), (P1, None)]
    assert seen(R1, "?reseller_id=r1") == [(P2, "r1"), (P1, None)]
    assert seen(ADMIN, "?phone=%2B14155550102") == [(P2, "r1")]
    assert seen(R2, "?phone=%2B14155550102") == []

    problem(client.get("/v1/dnc?reseller_id=r2", headers=R1), 403)
    problem(client.get("/v1/dnc", headers=ALERTS), 403)
    problem(client.get("/v1/dnc"), 401)
    assert fields(problem(client.get("/v1/dnc?phone=12345", headers=ADMIN), 422)) == ["phone"]
    assert fields(problem(client.get("/v1/dnc?cursor=bogus", headers=ADMIN), 422)) == ["cursor"]
    assert "limit" in fields(problem(client.get("/v1/dnc?limit=0", headers=ADMIN), 422))
    assert "limit" in fields(problem(client.get("/v1/dnc?limit=501", headers=ADMIN), 422))


def test_pages_follow_the_cursor_without_gaps_or_repeats(client: TestClient[Litestar]) -> None:
    phones = [f"+1415555011{i}" for i in range(7)]
    for phone in phones:  # one request each: ids, and so the order, are the request order
        assert client.post("/v1/dnc", json={"phones": [phone]}, headers=R1).status_code == 200

    pages: list[list[str]] = []
    cursor = None
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(f"/v1/dnc{query}", headers=R1).json()
        pages.append([i["phone"] for i in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [p for page in pages for p in page] == phones[::-1]


# --- removing ---------------------------------------------------------------------------


def test_delete_takes_a_number_off_one_list(client: TestClient[Litestar], runtime: Runtime) -> None:
    client.post("/v1/dnc", json={"phones": [P1, P2]}, headers=ADMIN)
    client.post("/v1/dnc", json={"phones": [P1, P2]}, headers=R1)
    client.post("/v1/dnc", json={"phones": [P1]}, headers=R2)

    with unchanged(runtime):
        problem(client.delete("/v1/dnc/%2B14155550101", headers=M1), 403)
        problem(client.delete("/v1/dnc/%2B14155550101", headers=ALERTS), 403)
        problem(client.delete("/v1/dnc/%2B14155550101?reseller_id=r2", headers=R1), 403)
        problem(client.delete("/v1/dnc/%2B14155550101"), 401)
        problem(client.delete(f"/v1/dnc/{P3}", headers=ADMIN), 404)
        problem(client.delete("/v1/dnc/%2B14155550103?reseller_id=r1", headers=ADMIN), 404)
        assert fields(problem(client.delete("/v1/dnc/12345", headers=ADMIN), 422)) == ["phone"]

    # Admin: the global list by default.
    r = client.delete("/v1/dnc/%2B14155550101", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json() == {"phone": P1, "reseller_id": None, "removed": True}
    assert (P1, None) not in entries(runtime) and (P1, "r1") in entries(runtime)
    problem(client.delete("/v1/dnc/%2B14155550101", headers=ADMIN), 404)
    # A raw '+' in the path is the same number.
    assert client.delete(f"/v1/dnc/{P2}", headers=ADMIN).status_code == 200

    # Admin on a reseller's list, and a reseller on its own.
    r = client.delete("/v1/dnc/%2B14155550101?reseller_id=r2", headers=ADMIN)
    assert r.json() == {"phone": P1, "reseller_id": "r2", "removed": True}
    assert client.delete("/v1/dnc/%2B14155550101", headers=R1).status_code == 200
    assert entries(runtime) == {(P2, "r1")}
    assert not listed(runtime, P1, "r1")
    # A reseller cannot take a number off the global list: it is not on its own.
    client.post("/v1/dnc", json={"phones": [P3]}, headers=ADMIN)
    with unchanged(runtime):
        problem(client.delete("/v1/dnc/%2B14155550103", headers=R1), 404)
    # Once off every list, a new lead of the number waits to be dialed again.
    assert statuses(runtime, lead(client, P1)) == ["BACKLOG"]
