"""Alert groups over the API: CRUD per reseller, validation naming each member's field,
who may read and write, and the audit trail of every change."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from dispatcher.runtime import Runtime
from dispatcher.settings import Settings
from dispatcher.tokens import issue_token
from tests.integration.api import auth, fields, problem

ADMIN = auth("admin")
R1 = {
    "Authorization": "Bearer " + issue_token(Settings().jwt_secret, "reseller", "r1", sub="lead@r1")
}
R2 = auth("reseller", "r2")
M1 = auth("merchant", "r1", "m1")
ALERTS1 = auth("alert_system", "r1")

ALICE = {"phone": "+14155550101", "name": "Alice"}
BOB = {"phone": "+14155550102", "name": "Bob"}


@pytest.fixture(autouse=True)
def _empty(runtime: Runtime) -> None:
    with runtime.pool.connection() as conn:
        conn.execute("TRUNCATE alert_groups, alert_group_changes RESTART IDENTITY CASCADE")


def audit(rt: Runtime) -> list[tuple[str, str, str, Any, str | None]]:
    with rt.pool.connection() as conn:
        rows = conn.execute(
            "SELECT reseller_id, name, action, members, actor FROM alert_group_changes ORDER BY id"
        ).fetchall()
    return [(r["reseller_id"], r["name"], r["action"], r["members"], r["actor"]) for r in rows]


def stored(rt: Runtime) -> list[tuple[str, str, Any]]:
    with rt.pool.connection() as conn:
        rows = conn.execute(
            "SELECT reseller_id, name, members FROM alert_groups ORDER BY id"
        ).fetchall()
    return [(r["reseller_id"], r["name"], r["members"]) for r in rows]


def test_crud_is_audited_with_the_actor(client: TestClient[Litestar], runtime: Runtime) -> None:
    r = client.post(
        "/v1/alert-groups",
        json={"name": " oncall ", "members": [ALICE, {"phone": " +14155550102", "name": "Bob"}]},
        headers=R1,
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["name"], body["reseller_id"]) == ("oncall", "r1")
    assert body["members"] == [ALICE, BOB]  # trimmed, call order kept

    got = client.get("/v1/alert-groups/oncall", headers=ALERTS1)  # an alert system may read
    assert got.status_code == 200 and got.json()["members"] == [ALICE, BOB]

    r = client.put("/v1/alert-groups/oncall", json={"members": [BOB]}, headers=R1)
    assert r.status_code == 200, r.text
    assert r.json()["members"] == [BOB]
    assert client.get("/v1/alert-groups/oncall", headers=R1).json()["members"] == [BOB]

    r = client.delete("/v1/alert-groups/oncall", headers=R1)
    assert r.status_code == 200 and r.json()["members"] == [BOB]
    problem(client.get("/v1/alert-groups/oncall", headers=R1), 404)
    assert stored(runtime) == []

    trail = audit(runtime)
    assert trail == [
        ("r1", "oncall", "created", [ALICE, BOB], "lead@r1"),
        ("r1", "oncall", "updated", [BOB], "lead@r1"),
        ("r1", "oncall", "deleted", [BOB], "lead@r1"),
    ]
    # The trail outlives the group and is readable over the API.
    changes = client.get("/v1/alert-groups/oncall/changes", headers=R1).json()["items"]
    assert [c["action"] for c in changes] == ["created", "updated", "deleted"]


def test_duplicate_name_is_409_per_reseller(client: TestClient[Litestar], runtime: Runtime) -> None:
    assert client.post("/v1/alert-groups", json={"name": "ops"}, headers=R1).status_code == 201
    body = problem(
        client.post("/v1/alert-groups", json={"name": "ops", "members": [ALICE]}, headers=R1), 409
    )
    assert "ops" in body["detail"]
    # Another reseller may use the same name; an empty group is allowed.
    assert client.post("/v1/alert-groups", json={"name": "ops"}, headers=R2).status_code == 201
    assert stored(runtime) == [("r1", "ops", []), ("r2", "ops", [])]
    assert [a[2] for a in audit(runtime)] == ["created", "created"]


def test_other_tenants_group_is_404(client: TestClient[Litestar], runtime: Runtime) -> None:
    client.post("/v1/alert-groups", json={"name": "ops", "members": [ALICE]}, headers=R1)
    problem(client.get("/v1/alert-groups/ops", headers=R2), 404)
    problem(client.put("/v1/alert-groups/ops", json={"members": []}, headers=R2), 404)
    problem(client.delete("/v1/alert-groups/ops", headers=R2), 404)
    problem(client.get("/v1/alert-groups/ops/changes", headers=R2), 404)
    assert client.get("/v1/alert-groups", headers=R2).json()["items"] == []
    problem(client.get("/v1/alert-groups?reseller_id=r1", headers=R2), 403)
    assert stored(runtime) == [("r1", "ops", [ALICE])]
    assert [a[2] for a in audit(runtime)] == ["created"]


def test_validation_names_each_members_field(
    client: TestClient[Litestar], runtime: Runtime
) -> None:
    bad = {
        "name": "ops",
        "members": [ALICE, {"phone": "4155550102", "name": "Bob"}, {"phone": "+1415", "name": " "}],
    }
    body = problem(client.post("/v1/alert-groups", json=bad, headers=R1), 422)
    assert sorted(fields(body)) == ["members[1].phone", "members[2].name", "members[2].phone"]
    body = problem(
        client.post(
            "/v1/alert-groups", json={"name": "ops", "members": [ALICE, ALICE]}, headers=R1
        ),
        422,
    )
    assert fields(body) == ["members[1].phone"]
    body = problem(client.post("/v1/alert-groups", json={"name": "  "}, headers=R1), 422)
    nameless = {"phone": ALICE["phone"]}
    assert fields(body) == ["name"]
    body = problem(
        client.post("/v1/alert-groups", json={"name": "ops", "members": [nameless]}, headers=R1),
        422,
    )
    assert fields(body) == ["members[0].name"]
    body = problem(client.post("/v1/alert-groups", json={"name": "x", "foo": 1}, headers=R1), 422)
    assert fields(body) == ["foo"]
    assert stored(runtime) == [] and audit(runtime) == []


def test_roles(client: TestClient[Litestar], runtime: Runtime) -> None:
    problem(client.post("/v1/alert-groups", json={"name": "ops"}, headers=ALERTS1), 403)
    problem(client.post("/v1/alert-groups", json={"name": "ops"}, headers=M1), 403)
    problem(client.get("/v1/alert-groups", headers=M1), 403)
    # A reseller cannot write into another reseller's namespace.
    problem(
        client.post("/v1/alert-groups", json={"name": "ops", "reseller_id": "r2"}, headers=R1), 403
    )
    # An admin must say whose group it is.
    body = problem(client.post("/v1/alert-groups", json={"name": "ops"}, headers=ADMIN), 422)
    assert fields(body) == ["reseller_id"]
    r = client.post("/v1/alert-groups", json={"name": "ops", "reseller_id": "r2"}, headers=ADMIN)
    assert r.status_code == 201 and r.json()["reseller_id"] == "r2"
    problem(client.put("/v1/alert-groups/ops", json={"members": []}, headers=ALERTS1), 403)
    problem(client.delete("/v1/alert-groups/ops", headers=ALERTS1), 403)
    assert [g["name"] for g in client.get("/v1/alert-groups", headers=ADMIN).json()["items"]] == [
        "ops"
    ]
    assert client.get("/v1/alert-groups/ops?reseller_id=r2", headers=ADMIN).status_code == 200
    assert stored(runtime) == [("r2", "ops", [])]
