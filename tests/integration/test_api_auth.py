"""Authentication and the public endpoints: JWTs, role guards, signed provider webhooks,
health, the OpenAPI document, and errors that never leak internals."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import psycopg
import pytest
import redis
from litestar import Litestar
from litestar.testing import TestClient

from dispatcher import leads, lifecycle
from dispatcher.lifecycle import NewAttempt, NewLead
from dispatcher.runtime import Runtime
from dispatcher.settings import Settings
from dispatcher.telephony.signing import SIGNATURE_HEADER, sign
from dispatcher.telephony.simulator import SimulatorProvider
from tests.integration.api import auth, fields, problem  # noqa: F401
from web.app import create_app
from web.auth import issue_token

SECRET = Settings().jwt_secret


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims_token(secret: str = SECRET, **claims: Any) -> str:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    return jwt.encode({"sub": "t", "iat": now, "exp": now + 60, **claims}, secret, "HS256")


@pytest.fixture(scope="module")
def runtime(database_url: str, redis_url: str) -> Iterator[Runtime]:
    settings = Settings.load({}, database_url=database_url, redis_url=redis_url)
    # The real simulator adapter: only its callback verification is used here.
    simulator = SimulatorProvider("http://127.0.0.1:9", settings.webhook_secret, timeout_s=1)
    rt = Runtime.open(settings, providers={"simulator": simulator})
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def client(runtime: Runtime) -> Iterator[TestClient[Litestar]]:
    with TestClient(create_app(runtime)) as c:
        yield c


def lead_count(rt: Runtime) -> int:
    with rt.pool.connection() as conn:
        row = conn.execute("SELECT count(*) AS n FROM leads").fetchone()
    assert row is not None
    return int(row["n"])


# --- tokens -----------------------------------------------------------------------------

BAD_TOKENS = {
    "no header": {},
    "not a JWT": bearer("garbage"),
    "other secret": bearer(claims_token("another-secret-of-at-least-32-bytes!!", role="admin")),
    "expired": bearer(
        jwt.encode({"sub": "t", "iat": 1, "exp": 2, "role": "admin"}, SECRET, "HS256")
    ),
    "unknown role": bearer(claims_token(role="root")),
    "no role": bearer(claims_token()),
    "reseller without reseller_id": bearer(claims_token(role="reseller")),
    "merchant without merchant_id": bearer(claims_token(role="merchant", reseller_id="r1")),
    "reseller_id not a string": bearer(claims_token(role="reseller", reseller_id=7)),
}


@pytest.mark.parametrize("headers", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_a_missing_or_bad_token_is_401_and_changes_nothing(
    client: TestClient[Litestar], runtime: Runtime, headers: dict[str, str]
) -> None:
    problem(client.get("/v1/leads", headers=headers), 401)
    problem(client.get("/v1/templates", headers=headers), 401)
    before = lead_count(runtime)
    body = {"phone": "+14155550123", "reseller_id": "r1"}
    problem(client.post("/v1/leads", json=body, headers=headers), 401)
    assert lead_count(runtime) == before


def test_issued_tokens_have_flat_claims_and_are_accepted(client: TestClient[Litestar]) -> None:
    token = issue_token(SECRET, "merchant", reseller_id="r1", merchant_id="m1", ttl_s=60)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert {k: claims[k] for k in ("role", "reseller_id", "merchant_id")} == {
        "role": "merchant",
        "reseller_id": "r1",
        "merchant_id": "m1",
    }
    assert 0 < claims["exp"] - claims["iat"] <= 60 and claims["sub"]
    assert client.get("/v1/leads", headers=bearer(token)).status_code == 200
    with pytest.raises(ValueError):
        issue_token(SECRET, "root")
    with pytest.raises(ValueError):
        issue_token(SECRET, "reseller")
    with pytest.raises(ValueError):
        issue_token(SECRET, "merchant", reseller_id="r1")


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("GET", "/v1/leads", ("alert_system", "r1", None)),
        ("POST", "/v1/leads", ("alert_system", "r1", None)),
        ("DELETE", "/v1/leads/1", ("alert_system", "r1", None)),
        ("POST", "/v1/numbers", ("merchant", "r1", "m1")),
        ("GET", "/v1/numbers", ("alert_system", "r1", None)),
        ("PUT", "/v1/templates/x", ("reseller", "r1", None)),
    ],
)
def test_a_role_without_access_is_403(
    client: TestClient[Litestar], method: str, path: str, role: tuple[str, str, str | None]
) -> None:
    headers = bearer(issue_token(SECRET, *role))
    body = {"phone": "+14155550123"} if method in ("POST", "PUT") else None
    problem(client.request(method, path, json=body, headers=headers), 403)


# --- public endpoints -------------------------------------------------------------------


def test_health_is_public_and_reports_each_check(client: TestClient[Litestar]) -> None:
    r = client.get("/health")
    # No scheduler or worker runs in this module: a 503 naming them, not a 401.
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert set(checks) == {"postgres", "redis", "scheduler", "workers", "due_backlog"}
    assert (checks["postgres"], checks["redis"], checks["due_backlog"]) == ("ok", "ok", "ok")
    assert checks["scheduler"].startswith("fail") and checks["workers"].startswith("fail")


def test_health_is_503_naming_the_failing_check(runtime: Runtime) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead_url = f"redis://127.0.0.1:{port}/0"
    settings = dataclasses.replace(runtime.settings, redis_url=dead_url)
    broken = Runtime(settings, runtime.pool, redis.Redis.from_url(dead_url), runtime.channels, {})
    with TestClient(create_app(broken)) as c:
        r = c.get("/health")
    assert r.status_code == 503
    body = r.json()
    assert (body["status"], body["checks"]["postgres"]) == ("fail", "ok")
    assert body["checks"]["redis"].startswith("fail: ")


def test_openapi_document_is_served_and_lists_the_routes(client: TestClient[Litestar]) -> None:
    r = client.get("/schema/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["info"]["title"] == "Switchboard"
    assert {
        "/v1/leads",
        "/v1/leads/bulk",
        "/v1/leads/{lead_id}",
        "/v1/numbers",
        "/v1/numbers/{number_id}",
        "/v1/templates",
        "/v1/templates/{name}",
        "/v1/webhooks/{provider}",
        "/health",
    } <= set(doc["paths"])
    assert set(doc["paths"]["/v1/leads/{lead_id}"]) == {"get", "delete"}
    lead_in = doc["components"]["schemas"]["LeadIn"]
    assert "phone" in lead_in["required"] and "idempotency_key" in lead_in["properties"]
    assert client.get("/schema").status_code == 200


# --- errors -----------------------------------------------------------------------------


def test_an_unexpected_error_is_a_500_problem_without_internals(
    client: TestClient[Litestar], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: Any, **__: Any) -> None:
        raise RuntimeError("password=hunter2 at db.internal:5432")

    monkeypatch.setattr(leads, "get", boom)
    r = client.get("/v1/leads/1", headers=bearer(issue_token(SECRET, "admin")))
    body = problem(r, 500)
    assert "hunter2" not in r.text and "db.internal" not in r.text
    assert body["detail"] == "an unexpected error occurred; it has been logged"


def test_a_database_outage_is_a_503_problem(
    client: TestClient[Litestar], monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*_: Any, **__: Any) -> None:
        raise psycopg.OperationalError("connection to db.internal refused")

    monkeypatch.setattr(leads, "get", down)
    r = client.get("/v1/leads/1", headers=bearer(issue_token(SECRET, "admin")))
    problem(r, 503)
    assert r.headers["retry-after"] == "5" and "db.internal" not in r.text


def test_malformed_json_is_a_400_problem(client: TestClient[Litestar]) -> None:
    headers = {**bearer(issue_token(SECRET, "reseller", "r1")), "content-type": "application/json"}
    problem(client.post("/v1/leads", content=b"{not json", headers=headers), 400)


# --- webhooks ---------------------------------------------------------------------------


@pytest.fixture()
def call(runtime: Runtime) -> tuple[int, uuid.UUID]:
    """A lead in a call: created, claimed, dialed and accepted, as the dispatcher does."""
    attempt_id = uuid.uuid4()
    with runtime.pool.connection() as conn, conn.transaction():
        number = conn.execute(
            "INSERT INTO outbound_numbers (e164, max_channels) VALUES ('+14155550100', 1)"
            " ON CONFLICT (e164) DO UPDATE SET max_channels = 1 RETURNING id"
        ).fetchone()
        assert number is not None
        now = dt.datetime.now(dt.UTC)
        [lead_id] = lifecycle.create_leads(
            conn, [NewLead("r1", "+14155550123", "default", now - dt.timedelta(seconds=1))]
        )
        assert lead_id is not None
        [claimed] = lifecycle.claim(conn, "r1", 1, lease_s=30)
        assert claimed.lead_id == lead_id
        attempt = NewAttempt(attempt_id, number["id"], "+14155550100", "simulator")
        assert lifecycle.start_dialing(conn, lead_id, claimed.fence, attempt) is not None
        assert lifecycle.mark_in_call(conn, lead_id, attempt_id, f"SIM-{attempt_id}")
    return lead_id, attempt_id


def callback(attempt_id: uuid.UUID, status: str = "completed") -> bytes:
    return json.dumps(
        {
            "event_id": f"{attempt_id}:{status}",
            "call_id": f"SIM-{attempt_id}",
            "attempt_id": str(attempt_id),
            "status": status,
            "duration_s": 12.5,
            "answered_by": "human",
            "digits": None,
            "timestamp": 1.0,
        }
    ).encode()


def lead_state(rt: Runtime, lead_id: int) -> tuple[str, int, int]:
    with rt.pool.connection() as conn:
        row = conn.execute(
            "SELECT l.status, (SELECT count(*) FROM lead_events WHERE lead_id = l.id) AS events,"
            " (SELECT count(*) FROM webhook_events) AS webhooks FROM leads l WHERE l.id = %s",
            (lead_id,),
        ).fetchone()
    assert row is not None
    return row["status"], row["events"], row["webhooks"]


def test_a_signed_callback_applies_once_without_a_token(
    client: TestClient[Litestar], runtime: Runtime, call: tuple[int, uuid.UUID]
) -> None:
    lead_id, attempt_id = call
    body = callback(attempt_id)
    headers = {SIGNATURE_HEADER: sign(body, runtime.settings.webhook_secret)}
    r = client.post("/v1/webhooks/simulator", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"applied": True}
    after = lead_state(runtime, lead_id)
    assert after[0] == "COMPLETED"
    again = client.post("/v1/webhooks/simulator", content=body, headers=headers)
    assert again.status_code == 200 and again.json() == {"applied": False}
    assert lead_state(runtime, lead_id) == after
    with runtime.pool.connection() as conn:
        attempt = conn.execute(
            "SELECT outcome, duration_s FROM call_attempts WHERE id = %s", (attempt_id,)
        ).fetchone()
    assert attempt is not None and (attempt["outcome"], float(attempt["duration_s"])) == (
        "completed",
        12.5,
    )


@pytest.mark.parametrize(
    "signature",
    [None, "sha256=" + "0" * 64, "garbage"],
    ids=["missing", "wrong", "malformed"],
)
def test_a_badly_signed_callback_is_403_and_changes_nothing(
    client: TestClient[Litestar],
    runtime: Runtime,
    call: tuple[int, uuid.UUID],
    signature: str | None,
) -> None:
    lead_id, attempt_id = call
    before = lead_state(runtime, lead_id)
    headers = {SIGNATURE_HEADER: signature} if signature else {}
    r = client.post("/v1/webhooks/simulator", content=callback(attempt_id), headers=headers)
    problem(r, 403)
    assert lead_state(runtime, lead_id) == before == ("IN_CALL", before[1], before[2])


def test_unknown_provider_and_malformed_callbacks(
    client: TestClient[Litestar], runtime: Runtime
) -> None:
    problem(client.post("/v1/webhooks/nope", content=b"{}"), 404)
    for body in (b"{not json", b"[]", json.dumps({"event_id": "e1"}).encode()):
        headers = {SIGNATURE_HEADER: sign(body, runtime.settings.webhook_secret)}
        problem(client.post("/v1/webhooks/simulator", content=body, headers=headers), 400)
