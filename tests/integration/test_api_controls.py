"""Pause and resume over the API: scopes, who may control what, and what the scheduler sees."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from dispatcher import controls, lifecycle
from dispatcher.controls import Paused
from dispatcher.runtime import Runtime
from tests.integration.api import auth, fields, problem

ADMIN = auth("admin")
R1 = auth("reseller", "r1")
R2 = auth("reseller", "r2")
M1 = auth("merchant", "r1", "m1")
ALERTS = auth("alert_system", "r1")
NOTHING = Paused(False, frozenset(), frozenset())


@pytest.fixture()
def nums(client: TestClient[Litestar], runtime: Runtime) -> dict[str, int]:
    """No controls; three numbers: r1's own, r2's own, and one shared."""
    with runtime.pool.connection() as conn:
        conn.execute("TRUNCATE controls, leads, outbound_numbers RESTART IDENTITY CASCADE")
    out = {}
    for name, e164, owner in (
        ("r1", "+15005550001", "r1"),
        ("r2", "+15005550002", "r2"),
        ("shared", "+15005550003", None),
    ):
        body = {"e164": e164, "max_channels": 1, "reseller_id": owner}
        r = client.post("/v1/numbers", json=body, headers=ADMIN)
        assert r.status_code == 201, r.text
        out[name] = r.json()["id"]
    return out


def paused(rt: Runtime) -> Paused:
    with rt.pool.connection() as conn:
        return controls.paused(conn)


def snapshot(rt: Runtime) -> tuple[list[dict[str, Any]], ...]:
    with rt.pool.connection() as conn:
        return (
            conn.execute("SELECT * FROM controls ORDER BY scope, scope_id").fetchall(),
            conn.execute("SELECT * FROM outbound_numbers ORDER BY id").fetchall(),
        )


@contextlib.contextmanager
def unchanged(rt: Runtime) -> Iterator[None]:
    before = snapshot(rt)
    yield
    assert snapshot(rt) == before, "a rejected request changed the controls"


def control(
    client: TestClient[Litestar], action: str, body: dict[str, Any], headers: dict[str, str]
) -> dict[str, Any]:
    r = client.post(f"/v1/controls/{action}", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_each_scope_pauses_and_resumes(
    client: TestClient[Litestar], runtime: Runtime, nums: dict[str, int]
) -> None:
    assert paused(runtime) == NOTHING
    row = control(client, "pause", {"scope": "global"}, ADMIN)
    assert {k: row[k] for k in ("scope", "id", "paused")} == {
        "scope": "global",
        "id": None,
        "paused": True,
    }
    assert paused(runtime) == Paused(True, frozenset(), frozenset())

    row = control(client, "pause", {"scope": "reseller", "id": "r1"}, ADMIN)
    assert (row["scope"], row["id"], row["paused"]) == ("reseller", "r1", True)
    row = control(client, "pause", {"scope": "number", "id": nums["r2"]}, ADMIN)
    assert (row["scope"], row["id"], row["paused"]) == ("number", nums["r2"], True)
    # Pausing again is harmless: still one row per scope.
    control(client, "pause", {"scope": "number", "id": str(nums["r2"])}, ADMIN)
    now = paused(runtime)
    assert now == Paused(True, frozenset({"r1"}), frozenset({nums["r2"]}))
    assert now.stops("r9") and now.stops("r1", None)

    r = client.get("/v1/controls", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert [(c["scope"], c["id"], c["paused"]) for c in r.json()["items"]] == [
        ("global", None, True),
        ("reseller", "r1", True),
        ("number", nums["r2"], True),
    ]
    assert r.json()["paused"] == {"global": True, "resellers": ["r1"], "numbers": [nums["r2"]]}

    control(client, "resume", {"scope": "global", "id": None}, ADMIN)
    now = paused(runtime)
    assert now == Paused(False, frozenset({"r1"}), frozenset({nums["r2"]}))
    assert now.stops("r1") and now.stops("r2", nums["r2"])
    assert not now.stops("r2") and not now.stops("r2", nums["shared"])
    control(client, "resume", {"scope": "reseller", "id": "r1"}, ADMIN)
    row = control(client, "resume", {"scope": "number", "id": nums["r2"]}, ADMIN)
    assert (row["id"], row["paused"]) == (nums["r2"], False)
    assert paused(runtime) == NOTHING
    # The rows stay, resumed, so the last change remains visible.
    body = client.get("/v1/controls", headers=ADMIN).json()
    assert [(c["scope"], c["paused"]) for c in body["items"]] == [
        ("global", False),
        ("reseller", False),
        ("number", False),
    ]
    assert body["paused"] == {"global": False, "resellers": [], "numbers": []}


def test_resume_wakes_the_schedulers(
    client: TestClient[Litestar], database_url: str, nums: dict[str, int]
) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {lifecycle.NOTIFY_CHANNEL}")
        control(client, "pause", {"scope": "reseller", "id": "r1"}, ADMIN)
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
        control(client, "resume", {"scope": "reseller", "id": "r1"}, ADMIN)
        heard = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.channel for n in heard] == [lifecycle.NOTIFY_CHANNEL]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scope": "planet"}, "scope"),
        ({"id": "r1"}, "scope"),
        ({"scope": "reseller"}, "id"),
        ({"scope": "reseller", "id": "  "}, "id"),
        ({"scope": "number"}, "id"),
        ({"scope": "number", "id": "abc"}, "id"),
        ({"scope": "number", "id": 0}, "id"),
        ({"scope": "number", "id": True}, "id"),
        ({"scope": "number", "id": 999_999}, "id"),  # no such number
        ({"scope": "global", "id": "r1"}, "id"),
        ({"scope": "global", "colour": "red"}, "colour"),
    ],
)
@pytest.mark.parametrize("action", ["pause", "resume"])
def test_bad_scopes_are_422_naming_the_field(
    client: TestClient[Litestar],
    runtime: Runtime,
    nums: dict[str, int],
    action: str,
    body: dict[str, Any],
    field: str,
) -> None:
    with unchanged(runtime):
        out = problem(client.post(f"/v1/controls/{action}", json=body, headers=ADMIN), 422)
    assert fields(out) == [field]


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        ({"scope": "global"}, R1, 403),
        ({"scope": "reseller", "id": "r2"}, R1, 403),
        ({"scope": "number", "id": "shared"}, R1, 403),  # would stop other resellers
        ({"scope": "number", "id": "r2"}, R1, 404),  # another reseller's
        ({"scope": "number", "id": 999_999}, R1, 404),  # none: the same answer
        ({"scope": "reseller", "id": "r1"}, M1, 403),
        ({"scope": "reseller", "id": "r1"}, ALERTS, 403),
        ({"scope": "global"}, {}, 401),
    ],
)
@pytest.mark.parametrize("action", ["pause", "resume"])
def test_controls_that_are_not_yours_change_nothing(
    client: TestClient[Litestar],
    runtime: Runtime,
    nums: dict[str, int],
    action: str,
    body: dict[str, Any],
    headers: dict[str, str],
    status: int,
) -> None:
    if isinstance(body.get("id"), str) and body["id"] in nums and body["scope"] == "number":
        body = {**body, "id": nums[body["id"]]}
    with unchanged(runtime):
        problem(client.post(f"/v1/controls/{action}", json=body, headers=headers), status)
    assert paused(runtime) == NOTHING


def test_a_reseller_controls_itself_and_its_numbers(
    client: TestClient[Litestar], runtime: Runtime, nums: dict[str, int]
) -> None:
    row = control(client, "pause", {"scope": "reseller"}, R1)  # no id: itself
    assert (row["scope"], row["id"]) == ("reseller", "r1")
    control(client, "pause", {"scope": "number", "id": nums["r1"]}, R1)
    for body in (
        {"scope": "global"},
        {"scope": "reseller", "id": "r2"},
        {"scope": "number", "id": nums["r2"]},
        {"scope": "number", "id": nums["shared"]},
    ):
        control(client, "pause", body, ADMIN)
    assert paused(runtime) == Paused(
        True, frozenset({"r1", "r2"}), frozenset({nums["r1"], nums["r2"], nums["shared"]})
    )

    # r1 sees what can stop its calls: global, itself, its own and the shared number.
    r = client.get("/v1/controls", headers=R1)
    assert r.status_code == 200, r.text
    assert [(c["scope"], c["id"]) for c in r.json()["items"]] == [
        ("global", None),
        ("reseller", "r1"),
        ("number", nums["r1"]),
        ("number", nums["shared"]),
    ]
    assert r.json()["paused"] == {
        "global": True,
        "resellers": ["r1"],
        "numbers": sorted([nums["r1"], nums["shared"]]),
    }
    problem(client.get("/v1/controls", headers=M1), 403)
    problem(client.get("/v1/controls", headers=ALERTS), 403)
    problem(client.get("/v1/controls"), 401)

    control(client, "resume", {"scope": "reseller", "id": "r1"}, R1)
    control(client, "resume", {"scope": "number", "id": nums["r1"]}, R1)
    assert paused(runtime) == Paused(
        True, frozenset({"r2"}), frozenset({nums["r2"], nums["shared"]})
    )
