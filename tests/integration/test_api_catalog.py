"""Outbound numbers and templates over the API: who may change what, and validation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from dispatcher.runtime import Runtime
from tests.integration.api import auth, fields, problem

ADMIN = auth("admin")
R1 = auth("reseller", "r1")
R2 = auth("reseller", "r2")

WINDOW = {"start": "08:30", "end": "20:00", "days": ["fri", "mon", "mon"]}
RETRY = {"max_attempts": 4, "retry_on": ["busy", "no_answer"], "delay_s": 600}
TEMPLATE = {
    "calling_window": WINDOW,
    "retry": RETRY,
    "frequency_cap": {"per_phone_per_day": 2},
    "execution_mode": "telephony",
}


def snapshot(rt: Runtime) -> tuple[list[dict[str, Any]], ...]:
    with rt.pool.connection() as conn:
        return (
            conn.execute("SELECT * FROM outbound_numbers ORDER BY id").fetchall(),
            conn.execute("SELECT * FROM templates ORDER BY name").fetchall(),
        )


@contextlib.contextmanager
def unchanged(rt: Runtime) -> Iterator[None]:
    before = snapshot(rt)
    yield
    assert snapshot(rt) == before, "a rejected request changed numbers or templates"


# --- numbers ----------------------------------------------------------------------------


def test_numbers_shared_pool_and_reseller_owned(
    client: TestClient[Litestar], runtime: Runtime
) -> None:
    shared = client.post(
        "/v1/numbers",
        json={"e164": "+15005550006", "max_channels": 4, "cps": 1.5, "reseller_id": None},
        headers=ADMIN,
    )
    assert shared.status_code == 201, shared.text
    assert {k: shared.json()[k] for k in ("e164", "provider", "max_channels", "cps")} == {
        "e164": "+15005550006",
        "provider": "simulator",
        "max_channels": 4,
        "cps": 1.5,
    }
    assert (shared.json()["reseller_id"], shared.json()["enabled"]) == (None, True)
    own = client.post("/v1/numbers", json={"e164": "+15005550007", "max_channels": 2}, headers=R1)
    assert own.status_code == 201 and own.json()["reseller_id"] == "r1"
    theirs = client.post(
        "/v1/numbers", json={"e164": "+15005550008", "max_channels": 2}, headers=R2
    )
    assert theirs.status_code == 201

    def visible(headers: dict[str, str]) -> set[str]:
        r = client.get("/v1/numbers", headers=headers)
        assert r.status_code == 200, r.text
        return {n["e164"] for n in r.json()["items"]}

    assert visible(R1) == {"+15005550006", "+15005550007"}
    assert visible(R2) == {"+15005550006", "+15005550008"}
    assert visible(ADMIN) == {"+15005550006", "+15005550007", "+15005550008"}


@pytest.mark.parametrize(
    ("body", "headers", "status", "field"),
    [
        ({"e164": "+15005550010", "max_channels": 1, "reseller_id": None}, R1, 403, None),
        ({"e164": "+15005550010", "max_channels": 1, "reseller_id": "r2"}, R1, 403, None),
        ({"e164": "+15005550010", "max_channels": 1}, auth("merchant", "r1", "m1"), 403, None),
        ({"e164": "+15005550006", "max_channels": 1}, ADMIN, 409, None),
        ({"e164": "5005550010", "max_channels": 1}, ADMIN, 422, "e164"),
        ({"e164": "+15005550010", "max_channels": 0}, ADMIN, 422, "max_channels"),
        ({"e164": "+15005550010", "max_channels": 1, "cps": 0}, ADMIN, 422, "cps"),
        (
            {"e164": "+15005550010", "max_channels": 1, "provider": "Bad Name"},
            ADMIN,
            422,
            "provider",
        ),
        ({"e164": "+15005550010", "max_channels": 1, "colour": "red"}, ADMIN, 422, "colour"),
        ({"e164": "+15005550010"}, ADMIN, 422, "max_channels"),
    ],
)
def test_rejected_numbers_change_nothing(
    client: TestClient[Litestar],
    runtime: Runtime,
    body: dict[str, Any],
    headers: dict[str, str],
    status: int,
    field: str | None,
) -> None:
    client.post("/v1/numbers", json={"e164": "+15005550006", "max_channels": 4}, headers=ADMIN)
    with unchanged(runtime):
        r = client.post("/v1/numbers", json=body, headers=headers)
    out = problem(r, status)
    if field is not None:
        assert field in fields(out)


def test_patch_numbers(client: TestClient[Litestar], runtime: Runtime) -> None:
    def create(e164: str, headers: dict[str, str], **extra: Any) -> int:
        body = {"e164": e164, "max_channels": 2, **extra}
        r = client.post("/v1/numbers", json=body, headers=headers)
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    mine = create("+15005550020", R1, cps=2)
    shared = create("+15005550021", ADMIN)
    theirs = create("+15005550022", R2)

    r = client.patch(f"/v1/numbers/{mine}", json={"max_channels": 5, "cps": None}, headers=R1)
    assert r.status_code == 200, r.text
    assert (r.json()["max_channels"], r.json()["cps"], r.json()["enabled"]) == (5, None, True)
    r = client.patch(f"/v1/numbers/{mine}", json={"enabled": False}, headers=R1)
    assert (r.json()["enabled"], r.json()["max_channels"]) == (False, 5)  # others unchanged
    with unchanged(runtime):
        problem(client.patch(f"/v1/numbers/{shared}", json={"enabled": False}, headers=R1), 403)
        problem(client.patch(f"/v1/numbers/{mine}", json={"reseller_id": "r2"}, headers=R1), 403)
        problem(client.patch(f"/v1/numbers/{theirs}", json={"enabled": False}, headers=R1), 404)
        problem(client.patch("/v1/numbers/999999", json={"enabled": False}, headers=ADMIN), 404)
        out = problem(
            client.patch(f"/v1/numbers/{mine}", json={"max_channels": 0}, headers=R1), 422
        )
        assert fields(out) == ["max_channels"]
    r = client.patch(f"/v1/numbers/{shared}", json={"reseller_id": "r2"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["reseller_id"] == "r2"
    with runtime.pool.connection() as conn:
        row = conn.execute(
            "SELECT max_channels, cps, enabled FROM outbound_numbers WHERE id = %s", (mine,)
        ).fetchone()
    assert row == {"max_channels": 5, "cps": None, "enabled": False}


# --- templates --------------------------------------------------------------------------


def test_the_two_seeded_templates_are_listed(client: TestClient[Litestar]) -> None:
    r = client.get("/v1/templates", headers=auth("merchant", "r1", "m1"))
    assert r.status_code == 200
    by_name = {t["name"]: t for t in r.json()["items"]}
    assert {"default", "alert"} <= set(by_name)
    default = client.get("/v1/templates/default", headers=R1).json()
    assert default["calling_window"] == {
        "start": "09:00",
        "end": "21:00",
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
    }
    assert default["retry"] == {
        "max_attempts": 3,
        "retry_on": ["busy", "no_answer", "failed", "voicemail"],
        "delay_s": 7200,
        "backoff": "fixed",
    }
    assert (default["frequency_cap"], default["execution_mode"]) == (
        {"per_phone_per_day": 3},
        "telephony",
    )
    alert = by_name["alert"]
    assert (alert["calling_window"], alert["frequency_cap"], alert["execution_mode"]) == (
        None,
        None,
        "telephony_alert",
    )
    problem(client.get("/v1/templates/nope", headers=R1), 404)


def test_put_creates_then_replaces_a_template(
    client: TestClient[Litestar], runtime: Runtime
) -> None:
    r = client.put("/v1/templates/sales", json=TEMPLATE, headers=ADMIN)
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["calling_window"] == {"start": "08:30", "end": "20:00", "days": ["mon", "fri"]}
    assert created["retry"] == {**RETRY, "backoff": "fixed"}
    assert client.get("/v1/templates/sales", headers=R1).json() == created

    replaced = {**TEMPLATE, "calling_window": None, "frequency_cap": None}
    replaced["execution_mode"] = "telephony_alert"
    r = client.put("/v1/templates/sales", json=replaced, headers=ADMIN)
    assert r.status_code == 200
    assert (r.json()["calling_window"], r.json()["frequency_cap"]) == (None, None)
    # A lead copies the template's execution mode.
    lead = client.post("/v1/leads", json={"phone": "+14155550123", "template": "sales"}, headers=R1)
    assert lead.status_code == 201 and lead.json()["execution_mode"] == "telephony_alert"
    with runtime.pool.connection() as conn:
        row = conn.execute(
            "SELECT calling_window, retry, execution_mode FROM templates WHERE name = 'sales'"
        ).fetchone()
    assert row == {
        "calling_window": None,
        "retry": {**RETRY, "backoff": "fixed"},
        "execution_mode": "telephony_alert",
    }


def _with(path: str, value: Any) -> dict[str, Any]:
    """TEMPLATE with the field at dotted `path` set to `value`."""
    body = {k: dict(v) if isinstance(v, dict) else v for k, v in TEMPLATE.items()}
    head, _, leaf = path.partition(".")
    if leaf:
        body[head][leaf] = value
    else:
        body[head] = value
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_with("calling_window.start", "9:00"), "calling_window.start"),
        (_with("calling_window.end", "24:00"), "calling_window.end"),
        (_with("calling_window.end", "08:00"), "calling_window.end"),
        (_with("calling_window.days", ["funday"]), "calling_window.days"),
        (_with("calling_window.days", []), "calling_window.days"),
        (_with("retry.max_attempts", 21), "retry.max_attempts"),
        (_with("retry.max_attempts", 0), "retry.max_attempts"),
        (_with("retry.retry_on", ["busy", "nope"]), "retry.retry_on"),
        (_with("retry.delay_s", -1), "retry.delay_s"),
        (_with("retry.backoff", "linear"), "retry.backoff"),
        (_with("retry.jitter", 1.5), "retry.jitter"),
        (_with("frequency_cap.per_phone_per_day", 0), "frequency_cap.per_phone_per_day"),
        (_with("execution_mode", "sms"), "execution_mode"),
        ({**TEMPLATE, "colour": "red"}, "colour"),
        ({k: v for k, v in TEMPLATE.items() if k != "retry"}, "retry"),
    ],
)
def test_invalid_templates_are_422_naming_the_field(
    client: TestClient[Litestar], runtime: Runtime, body: dict[str, Any], field: str
) -> None:
    with unchanged(runtime):
        r = client.put("/v1/templates/broken", json=body, headers=ADMIN)
    assert field in fields(problem(r, 422))
    problem(client.get("/v1/templates/broken", headers=ADMIN), 404)


def test_template_names_and_roles(client: TestClient[Litestar], runtime: Runtime) -> None:
    with unchanged(runtime):
        assert fields(
            problem(client.put("/v1/templates/%20", json=TEMPLATE, headers=ADMIN), 422)
        ) == ["name"]
        assert "name" in fields(
            problem(client.put("/v1/templates/has%20space", json=TEMPLATE, headers=ADMIN), 422)
        )
        problem(client.put("/v1/templates/default", json=TEMPLATE, headers=R1), 403)
        problem(
            client.put("/v1/templates/x", json=TEMPLATE, headers=auth("alert_system", "r1")), 403
        )
    assert client.get("/v1/templates/default", headers=R1).json()["retry"]["delay_s"] == 7200


def test_template_keeps_restricted_dates_and_retry_options(client: TestClient[Litestar]) -> None:
    body = {
        "calling_window": {
            "start": "10:00",
            "end": "18:00",
            "days": ["fri", "mon", "mon"],
            "restricted_dates": ["2026-12-25", "2026-12-24"],
        },
        "retry": {
            "max_attempts": 2,
            "retry_on": ["busy"],
            "delay_s": 60,
            "jitter": 0.2,
            "spread_hours": 3,
        },
        "frequency_cap": None,
        "execution_mode": "telephony",
    }
    r = client.put("/v1/templates/holidays", json=body, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["calling_window"] == {
        "start": "10:00",
        "end": "18:00",
        "days": ["mon", "fri"],
        "restricted_dates": ["2026-12-24", "2026-12-25"],
    }
    assert (r.json()["retry"]["jitter"], r.json()["retry"]["spread_hours"]) == (0.2, 3)
    bad = {**body, "calling_window": {**body["calling_window"], "restricted_dates": ["25.12.2026"]}}
    r = client.put("/v1/templates/holidays", json=bad, headers=ADMIN)
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["calling_window.restricted_dates"]
