"""The telephony simulator (engine and HTTP app) and the adapter that talks to it.

Engine tests drive `Simulator` on a private event loop with a recording `deliver`; app
tests use Litestar's TestClient with callbacks routed to an httpx MockTransport; adapter
tests run the app under uvicorn on a free port and call it with `SimulatorProvider`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from litestar.testing import TestClient

from dispatcher.settings import Settings
from dispatcher.simulator.app import CallbackSender, create_app
from dispatcher.simulator.engine import (
    OUTCOMES,
    IdempotencyConflict,
    InvalidInput,
    PlaceRequest,
    SimConfig,
    Simulator,
    parse_place_request,
)
from dispatcher.telephony.base import BadSignature, CallRequest, ProviderError, outcome_for
from dispatcher.telephony.signing import SIGNATURE_HEADER, sign
from dispatcher.telephony.simulator import SimulatorProvider

SECRET = "test-webhook-secret"
FAST = SimConfig(ring_ms=(1.0, 5.0), talk_ms=(1.0, 5.0))
HOOK = "http://switchboard.test/v1/webhooks/simulator"
FROM = "+14155550100"
TO = "+14155550123"


def body(
    lead_id: int = 1,
    *,
    attempt_id: str | None = None,
    to: str = TO,
    from_: str = FROM,
    max_channels: int = 4,
    cps: float | None = None,
) -> dict[str, Any]:
    return {
        "lead_id": lead_id,
        "attempt_id": attempt_id or str(uuid.uuid4()),
        "to": to,
        "from": from_,
        "max_channels": max_channels,
        "cps": cps,
        "webhook_url": HOOK,
        "payload": {"name": "Ada"},
    }


def req(lead_id: int = 1, **kw: Any) -> PlaceRequest:
    return parse_place_request(body(lead_id, **kw))


class Recorder:
    """A `deliver` that records each event with what the simulator's books said then."""

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.sim: Simulator | None = None
        self.events: list[dict[str, Any]] = []
        self.in_flight_at: list[int] = []

    async def __call__(self, url: str, event: dict[str, Any]) -> bool:
        assert url == HOOK
        self.events.append(event)
        assert self.sim is not None
        self.in_flight_at.append(self.sim.stats()["in_flight"])
        return self.ok

    def statuses(self) -> list[str]:
        return [e["status"] for e in self.events]


def make_sim(config: SimConfig = FAST, **kw: Any) -> tuple[Simulator, Recorder]:
    recorder = Recorder(**kw)
    sim = Simulator(recorder, config)
    recorder.sim = sim
    return sim, recorder


def play(sim: Simulator, *requests: PlaceRequest) -> list[str]:
    """Place the requests at once, play everything out; the call ids."""

    async def go() -> list[str]:
        ids = []
        for request in requests:
            call, created = sim.place(request)
            if created:
                sim.start(call)
            ids.append(call.call_id)
        await sim.wait_idle()
        return ids

    return asyncio.run(go())


# ---------------------------------------------------------------- engine: outcomes


@pytest.mark.parametrize(
    ("outcome", "status", "answered_by"),
    [
        ("answered", "completed", "human"),
        ("completed", "completed", "human"),
        ("voicemail", "completed", "machine_start"),
        ("no_answer", "no-answer", None),
        ("busy", "busy", None),
        ("failed", "failed", None),
        ("rejected", "rejected", None),
        ("invalid", "invalid", None),
    ],
)
def test_each_outcome_plays_out_to_its_twilio_status(
    outcome: str, status: str, answered_by: str | None
) -> None:
    sim, rec = make_sim()
    sim.set_script({TO: [{"outcome": outcome, "talk_ms": 20, "digits": "1"}]})
    play(sim, req())

    answered = answered_by is not None
    expected = ["initiated", "ringing", *(["in-progress"] if answered else []), status]
    assert rec.statuses() == expected
    final = rec.events[-1]
    assert final["answered_by"] == answered_by
    assert final["duration_s"] == (0.02 if answered else 0.0)
    assert final["digits"] == "1"
    assert all(e["digits"] is None for e in rec.events[:-1])
    assert len({e["event_id"] for e in rec.events}) == len(rec.events)
    # Switchboard's reading of the final status gives back the scripted outcome.
    assert outcome_for(status, answered_by) == {"answered": "completed"}.get(outcome, outcome)
    assert sim.stats()["by_outcome"] == {outcome: 1}


def test_outcomes_cover_the_api_vocabulary() -> None:
    assert set(OUTCOMES) == {
        "answered",
        "completed",
        "voicemail",
        "no_answer",
        "busy",
        "failed",
        "rejected",
        "invalid",
    }


def test_script_is_consumed_in_order_per_number_then_distribution_applies() -> None:
    sim, _ = make_sim(FAST.updated({"distribution": {"failed": 1}}))
    sim.set_script({TO: ["no_answer", "busy", "answered"], "+14155550999": ["voicemail"]})
    play(sim, *(req(i, to=TO) for i in range(4)), req(9, to="+14155550999"))

    ledger = sorted((c.request.lead_id, c.outcome) for c in sim.calls())
    assert ledger == [
        (0, "no_answer"),
        (1, "busy"),
        (2, "answered"),
        (3, "failed"),
        (9, "voicemail"),
    ]
    assert sim.scripts() == {}


def test_put_script_replaces_only_the_listed_numbers_and_empty_list_clears() -> None:
    sim, _ = make_sim()
    sim.set_script({TO: ["busy"], "+14155550999": ["failed"]})
    assert sim.set_script({TO: ["answered", {"outcome": "voicemail", "digits": "2"}]}) == {
        TO: [{"outcome": "answered"}, {"outcome": "voicemail", "digits": "2"}],
        "+14155550999": [{"outcome": "failed"}],
    }
    assert sim.set_script({"+14155550999": []}) == {
        TO: [{"outcome": "answered"}, {"outcome": "voicemail", "digits": "2"}]
    }


def test_seeded_outcomes_are_reproducible_per_attempt_whatever_the_order() -> None:
    attempts = [str(uuid.uuid4()) for _ in range(40)]
    config = FAST.updated({"seed": 7})

    def outcomes(order: list[str], cfg: SimConfig) -> dict[str, str]:
        sim, _ = make_sim(cfg)
        return {a: sim.place(req(i, attempt_id=a))[0].outcome for i, a in enumerate(order)}

    first = outcomes(attempts, config)
    assert outcomes(list(reversed(attempts)), config) == first
    assert outcomes(attempts, config.updated({"seed": 8})) != first
    assert len(set(first.values())) > 1  # the default distribution is not one outcome


def test_distribution_weights_are_followed() -> None:
    sim, _ = make_sim(FAST.updated({"distribution": {"busy": 3, "answered": 1, "failed": 0}}))
    counts: dict[str, int] = {}
    for i in range(2000):
        outcome = sim.place(req(i))[0].outcome
        counts[outcome] = counts.get(outcome, 0) + 1
    assert set(counts) == {"busy", "answered"}
    assert 0.70 < counts["busy"] / 2000 < 0.80


# ---------------------------------------------------------------- engine: the books


def test_call_is_ended_in_the_books_before_its_final_callback() -> None:
    sim, rec = make_sim()
    sim.set_script({TO: ["answered"]})
    play(sim, req())
    assert rec.statuses() == ["initiated", "ringing", "in-progress", "completed"]
    assert rec.in_flight_at == [1, 1, 1, 0]
    call = sim.calls()[0]
    assert call.status == "completed"
    assert call.ended_at is not None
    assert call.ended_at >= call.placed_at


def test_replay_of_an_attempt_returns_the_same_call_and_is_not_a_new_call() -> None:
    sim, rec = make_sim()
    attempt = str(uuid.uuid4())
    ids = play(sim, req(5, attempt_id=attempt), req(5, attempt_id=attempt.upper()))
    assert ids[0] == ids[1]
    stats = sim.stats()
    assert stats["calls_total"] == 1
    assert stats["idempotent_replays"] == 1
    assert stats["duplicate_dials"] == 0
    assert rec.statuses().count("initiated") == 1
    # A replay after the call ended is still the same call.
    again, created = sim.place(req(5, attempt_id=attempt))
    assert (again.call_id, created) == (ids[0], False)
    assert sim.stats()["idempotent_replays"] == 2


def test_attempt_id_reused_for_another_lead_is_a_conflict() -> None:
    sim, _ = make_sim()
    attempt = str(uuid.uuid4())
    sim.place(req(1, attempt_id=attempt))
    with pytest.raises(IdempotencyConflict):
        sim.place(req(2, attempt_id=attempt))
    assert sim.stats()["calls_total"] == 1


def test_channel_violation_counts_calls_placed_on_a_full_number() -> None:
    sim, _ = make_sim()
    play(
        sim,
        req(1, max_channels=2),
        req(2, max_channels=2),
        req(3, max_channels=2),  # third while two are up: a violation
        req(4, from_="+14155550111", max_channels=1),  # another number: fine
    )
    stats = sim.stats()
    assert stats["channel_violations"] == 1
    assert stats["max_concurrent_by_number"] == {FROM: 3, "+14155550111": 1}
    assert stats["in_flight"] == 0
    # Once they ended, the number is free again.
    play(sim, req(5, max_channels=1))
    assert sim.stats()["channel_violations"] == 1


def test_violations_are_logged_with_masked_numbers(caplog: pytest.LogCaptureFixture) -> None:
    sim, _ = make_sim()
    with caplog.at_level(logging.DEBUG, logger="dispatcher.simulator.engine"):
        sim.place(req(1, max_channels=1))
        sim.place(req(1, max_channels=1))
    text = caplog.text
    assert "channel violation" in text
    assert "duplicate dial" in text
    assert "0100" in text and "0123" in text
    assert FROM not in text and TO not in text
    assert "4155550" not in text


def test_max_channels_is_taken_from_each_request() -> None:
    sim, _ = make_sim()
    sim.place(req(1, max_channels=1))
    sim.place(req(2, max_channels=5))  # the number claims 5 channels now: no violation
    sim.place(req(3, max_channels=1))
    assert sim.stats()["channel_violations"] == 1


def test_duplicate_dial_is_a_new_attempt_for_a_lead_with_a_call_in_flight() -> None:
    sim, _ = make_sim()
    sim.place(req(7))
    sim.place(req(7))  # new attempt id, same lead, first call still up
    sim.place(req(8))
    assert sim.stats()["duplicate_dials"] == 1


def test_a_retry_after_the_call_ended_is_not_a_duplicate_dial() -> None:
    sim, _ = make_sim()
    play(sim, req(7))
    play(sim, req(7))
    assert sim.stats()["duplicate_dials"] == 0
    assert sim.stats()["calls_total"] == 2


def test_calls_per_second_is_the_busiest_sliding_one_second_window() -> None:
    now = [100.0]
    sim = Simulator(Recorder(), FAST, monotonic=lambda: now[0])
    for t, number in [
        (0.0, FROM),
        (0.5, FROM),
        (0.9, FROM),
        (1.0, FROM),  # the call at 0.0 left the window: {0.5, 0.9, 1.0}
        (1.2, "+14155550111"),
        (2.0, FROM),  # {2.0} only: 1.0 is exactly one second old
    ]:
        now[0] = 100.0 + t
        sim.place(req(int(t * 10), from_=number, cps=2))
    stats = sim.stats()
    assert stats["max_calls_per_second_by_number"] == {FROM: 3, "+14155550111": 1}
    assert stats["cps_violations"] == 2  # the 3rd call in {0.5, 0.9} and {0.5, 0.9, 1.0}


# ---------------------------------------------------------------- engine: faults


def test_drop_never_sends_the_final_callback_but_the_call_still_ends() -> None:
    sim, rec = make_sim(FAST.updated({"callbacks": {"drop": 1.0}}))
    sim.set_script({TO: ["busy"]})
    attempt = str(uuid.uuid4())
    play(sim, req(attempt_id=attempt))
    assert rec.statuses() == ["initiated", "ringing"]
    assert sim.stats()["in_flight"] == 0
    assert sim.stats()["faults"]["dropped"] == 1
    call = sim.lookup(attempt)
    assert call is not None
    assert call.lookup_json()["status"] == "busy"


def test_without_progress_only_the_final_callback_is_sent() -> None:
    sim, rec = make_sim(FAST.updated({"progress": False}))
    sim.set_script({TO: ["answered"], "+14155550199": ["busy"]})
    play(sim, req(), req(lead_id=2, to="+14155550199"))
    assert sorted(rec.statuses()) == ["busy", "completed"]
    assert FAST.updated({"progress": False}).to_json()["progress"] is False
    with pytest.raises(InvalidInput) as caught:
        FAST.updated({"progress": "no"})
    assert caught.value.field == "progress"


def test_reorder_delivers_ringing_after_the_final_status() -> None:
    sim, rec = make_sim(FAST.updated({"callbacks": {"reorder": 1.0}}))
    sim.set_script({TO: ["no_answer"]})
    play(sim, req())
    assert rec.statuses() == ["initiated", "no-answer", "ringing"]
    ringing, final = rec.events[2], rec.events[1]
    assert ringing["timestamp"] <= final["timestamp"]  # it happened first, arrived last


def test_duplicate_sends_every_event_twice_with_the_same_event_id() -> None:
    sim, rec = make_sim(FAST.updated({"callbacks": {"duplicate": 1.0}}))
    sim.set_script({TO: ["busy"]})
    play(sim, req())
    assert rec.statuses() == ["initiated"] * 2 + ["ringing"] * 2 + ["busy"] * 2
    assert [rec.events[i] == rec.events[i + 1] for i in (0, 2, 4)] == [True] * 3
    stats = sim.stats()
    assert stats["callbacks_sent"] == 6
    assert stats["faults"]["duplicated"] == 3


def test_fault_probabilities_are_probabilities() -> None:
    sim, rec = make_sim(FAST.updated({"callbacks": {"drop": 0.5}, "seed": 3}))
    play(sim, *(req(i) for i in range(200)))
    dropped = sim.stats()["faults"]["dropped"]
    assert 60 < dropped < 140
    assert sum(s in ("initiated",) for s in rec.statuses()) == 200


def test_failed_deliveries_are_counted() -> None:
    sim, _ = make_sim(ok=False)
    sim.set_script({TO: ["busy"]})
    play(sim, req())
    stats = sim.stats()
    assert (stats["callbacks_sent"], stats["callbacks_failed"]) == (0, 3)


def test_reset_cancels_calls_in_progress_and_clears_books_and_scripts() -> None:
    sim, rec = make_sim(SimConfig(ring_ms=(5000, 5000), seed=11))
    sim.set_script({"+14155550999": ["busy"]})

    async def go() -> None:
        call, _ = sim.place(req())
        sim.start(call)
        await asyncio.sleep(0.02)
        await sim.reset()
        await asyncio.sleep(0.02)

    asyncio.run(go())
    assert rec.statuses() == ["initiated", "ringing"]
    assert sim.calls() == []
    assert sim.scripts() == {}
    assert sim.stats()["calls_total"] == 0
    assert sim.stats()["in_flight"] == 0
    assert sim.config.seed == 11  # config kept
    asyncio.run(sim.reset(reset_config=True))
    assert sim.config == SimConfig()


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"distribution": {"answered": 1, "sometimes": 1}}, "distribution.sometimes"),
        ({"distribution": {"answered": -1}}, "distribution.answered"),
        ({"distribution": {"answered": 0}}, "distribution"),
        ({"distribution": []}, "distribution"),
        ({"ring_ms": [200, 50]}, "ring_ms"),
        ({"ring_ms": [1]}, "ring_ms"),
        ({"talk_ms": [0, "long"]}, "talk_ms"),
        ({"talk_ms": [0, float("inf")]}, "talk_ms"),
        ({"seed": "42"}, "seed"),
        ({"seed": True}, "seed"),
        ({"callbacks": {"drop": 1.5}}, "callbacks.drop"),
        ({"callbacks": {"lose": 0.1}}, "callbacks.lose"),
        ({"callbacks": 0.1}, "callbacks"),
        ({"colour": "blue"}, "colour"),
        ([], "body"),
    ],
)
def test_config_validation_names_the_bad_field(changes: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        SimConfig().updated(changes)
    assert caught.value.field == field


def test_config_partial_update_keeps_the_rest() -> None:
    base = SimConfig().updated({"callbacks": {"duplicate": 0.1}, "seed": 1})
    new = base.updated({"ring_ms": [10, 20], "callbacks": {"drop": 0.2}})
    assert new.ring_ms == (10.0, 20.0)
    assert new.talk_ms == base.talk_ms
    assert new.seed == 1
    assert (new.callbacks.duplicate, new.callbacks.drop) == (0.1, 0.2)
    assert new.distribution == base.distribution


def test_default_config() -> None:
    config = SimConfig()
    assert (config.ring_ms, config.talk_ms) == ((50.0, 200.0), (100.0, 500.0))
    dist = config.distribution
    assert max(dist, key=lambda k: dist[k]) == "answered"
    assert {"no_answer", "busy", "voicemail", "failed"} <= set(dist)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lead_id": "1"}, "lead_id"),
        ({"attempt_id": "nope"}, "attempt_id"),
        ({"to": " "}, "to"),
        ({"from": None}, "from"),
        ({"max_channels": 0}, "max_channels"),
        ({"cps": 0}, "cps"),
        ({"cps": "fast"}, "cps"),
        ({"webhook_url": "ftp://x/y"}, "webhook_url"),
        ({"webhook_url": "not a url"}, "webhook_url"),
        ({"payload": [1]}, "payload"),
    ],
)
def test_place_request_validation_names_the_bad_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_place_request({**body(), **change})
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("script", "field"),
    [
        ({TO: "busy"}, TO),
        ({TO: ["sometimes"]}, f"{TO}[0].outcome"),
        ({TO: ["busy", {"outcome": "answered", "digits": 1}]}, f"{TO}[1].digits"),
        ({TO: [{"outcome": "answered", "talk_ms": -1}]}, f"{TO}[0].talk_ms"),
        ({TO: [{"outcome": "answered", "extra": 1}]}, f"{TO}[0].extra"),
    ],
)
def test_script_validation_names_the_bad_entry(script: Any, field: str) -> None:
    sim, _ = make_sim()
    with pytest.raises(InvalidInput) as caught:
        sim.set_script(script)
    assert caught.value.field == field
    assert sim.scripts() == {}


# ---------------------------------------------------------------- the HTTP app


class Hook:
    """The webhook receiver behind an httpx MockTransport; verifies with the adapter."""

    def __init__(self) -> None:
        self.provider = SimulatorProvider("http://unused", SECRET)
        self.raw: list[httpx.Request] = []
        self.events: list[Any] = []
        self.lock = threading.Lock()
        self.fail_first = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.raw.append(request)
            if self.fail_first > 0:
                self.fail_first -= 1
                return httpx.Response(503)
            event = self.provider.parse_callback(request.content, request.headers, str(request.url))
            self.events.append(event)
        return httpx.Response(200)


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = Hook()
    yield receiver
    receiver.provider.close()


@pytest.fixture
def client(hook: Hook) -> Iterator[TestClient[Any]]:
    app = create_app(
        Settings(webhook_secret=SECRET), config=FAST, transport=httpx.MockTransport(hook)
    )
    with TestClient(app) as test_client:
        yield test_client


def wait_idle(client: TestClient[Any]) -> None:
    client.blocking_portal.call(client.app.state.simulator.wait_idle)


def test_http_place_replay_lookup_and_signed_callbacks(client: TestClient[Any], hook: Hook) -> None:
    script = client.put("/sim/script", json={TO: [{"outcome": "answered", "digits": "1"}]})
    assert script.status_code == 200
    assert script.json() == {TO: [{"outcome": "answered", "digits": "1"}]}
    request = body(42)
    first = client.post("/calls", json=request)
    assert first.status_code == 201
    assert first.json()["status"] == "queued"
    call_id = first.json()["call_id"]
    replay = client.post("/calls", json=request)
    assert replay.status_code == 200
    assert replay.json()["call_id"] == call_id

    wait_idle(client)
    assert [e.status for e in hook.events] == ["initiated", "ringing", "in-progress", "completed"]
    final = hook.events[-1]
    assert (final.call_id, str(final.attempt_id)) == (call_id, request["attempt_id"])
    assert (final.answered_by, final.digits) == ("human", "1")
    assert final.duration_s is not None and final.duration_s > 0
    for raw in hook.raw:
        assert raw.headers[SIGNATURE_HEADER] == sign(raw.content, SECRET)
        assert raw.headers["content-type"] == "application/json"
        assert str(raw.url) == HOOK

    looked_up = client.get(f"/calls/{request['attempt_id']}")
    assert looked_up.status_code == 200
    assert looked_up.json() == {
        "call_id": call_id,
        "attempt_id": request["attempt_id"],
        "lead_id": 42,
        "status": "completed",
        "duration_s": final.duration_s,
        "answered_by": "human",
        "digits": "1",
    }
    assert client.get(f"/calls/{uuid.uuid4()}").status_code == 404
    assert client.get("/calls/not-a-uuid").status_code == 404

    [row] = client.get("/sim/calls").json()
    assert row["call_id"] == call_id
    assert (row["to"], row["from"], row["outcome"], row["status"]) == (
        TO,
        FROM,
        "answered",
        "completed",
    )
    assert row["placed_at"] <= row["ended_at"] <= time.time()

    stats = client.get("/sim/stats").json()
    assert stats["calls_total"] == 1
    assert stats["idempotent_replays"] == 1
    assert stats["by_outcome"] == {"answered": 1}
    assert stats["in_flight"] == 0
    assert stats["max_concurrent_by_number"] == {FROM: 1}
    assert stats["max_calls_per_second_by_number"] == {FROM: 1}
    assert stats["callbacks_sent"] == 4
    assert stats["callbacks_failed"] == 0
    assert {"channel_violations", "duplicate_dials"} <= set(stats)


def test_http_callbacks_retry_on_5xx(client: TestClient[Any], hook: Hook) -> None:
    hook.fail_first = 2
    client.put("/sim/script", json={TO: ["busy"]})
    assert client.post("/calls", json=body()).status_code == 201
    wait_idle(client)
    assert [e.status for e in hook.events] == ["initiated", "ringing", "busy"]
    assert len(hook.raw) == 5
    assert client.get("/sim/stats").json()["callbacks_sent"] == 3


@pytest.mark.parametrize(
    ("method", "path", "payload", "field"),
    [
        ("put", "/sim/config", {"ring_ms": [5, 1]}, "ring_ms"),
        ("put", "/sim/config", {"callbacks": {"drop": 2}}, "callbacks.drop"),
        ("put", "/sim/script", {TO: ["sometimes"]}, f"{TO}[0].outcome"),
        ("post", "/calls", {**body(), "max_channels": 0}, "max_channels"),
        ("post", "/sim/reset", {"reset_config": "yes"}, "reset_config"),
    ],
)
def test_http_bad_input_is_a_422_problem_naming_the_field(
    client: TestClient[Any], method: str, path: str, payload: Any, field: str
) -> None:
    response = client.request(method.upper(), path, json=payload)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 422
    assert problem["errors"][0]["field"] == field
    assert field in problem["detail"]


def test_http_malformed_json_is_rejected(client: TestClient[Any]) -> None:
    response = client.post(
        "/calls", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body"


def test_http_reused_attempt_id_for_another_lead_is_409(client: TestClient[Any]) -> None:
    request = body(1)
    assert client.post("/calls", json=request).status_code == 201
    assert client.post("/calls", json={**request, "lead_id": 2}).status_code == 409


def test_http_config_and_reset(client: TestClient[Any]) -> None:
    config = client.put("/sim/config", json={"seed": 99, "callbacks": {"duplicate": 0.25}})
    assert config.status_code == 200
    assert config.json()["seed"] == 99
    assert config.json()["callbacks"] == {"duplicate": 0.25, "reorder": 0.0, "drop": 0.0}
    assert config.json()["ring_ms"] == list(FAST.ring_ms)
    assert client.get("/sim/config").json() == config.json()

    client.put("/sim/script", json={TO: ["busy"]})
    client.post("/calls", json=body())
    wait_idle(client)
    reset = client.post("/sim/reset")
    assert reset.status_code == 200
    assert reset.json()["config"]["seed"] == 99
    assert client.get("/sim/calls").json() == []
    assert client.get("/sim/script").json() == {}
    assert client.get("/sim/stats").json()["calls_total"] == 0

    reset = client.post("/sim/reset", json={"reset_config": True})
    assert reset.json()["config"] == SimConfig().to_json()
    assert client.get("/health").json() == {"status": "ok"}


def test_callback_sender_does_not_retry_a_refusal_and_gives_up_on_connection_errors() -> None:
    calls: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append("refuse")
        return httpx.Response(403)

    def unreachable(request: httpx.Request) -> httpx.Response:
        calls.append("unreachable")
        raise httpx.ConnectError("connection refused", request=request)

    async def deliver(handler: Any) -> bool:
        sender = CallbackSender(
            SECRET, transport=httpx.MockTransport(handler), attempts=3, backoff_s=0.001
        )
        async with sender.running():
            return await sender.deliver(HOOK, {"event_id": "e", "status": "busy"})

    assert asyncio.run(deliver(refuse)) is False
    assert asyncio.run(deliver(unreachable)) is False
    assert calls == ["refuse", *["unreachable"] * 3]


# ---------------------------------------------------------------- the adapter


@pytest.fixture
def served(hook: Hook) -> Iterator[str]:
    """The simulator app under uvicorn on a free port; its base URL."""
    app = create_app(
        Settings(webhook_secret=SECRET), config=FAST, transport=httpx.MockTransport(hook)
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, access_log=False, ws="none", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started:
        assert time.monotonic() < deadline, "simulator did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


def call_request(attempt_id: uuid.UUID, max_channels: int = 2) -> CallRequest:
    return CallRequest(
        attempt_id=attempt_id,
        lead_id=3,
        to=TO,
        from_=FROM,
        max_channels=max_channels,
        cps=1.5,
        webhook_url=HOOK,
        payload={"k": "v"},
    )


def test_adapter_places_replays_and_fetches_calls(served: str, hook: Hook) -> None:
    provider = SimulatorProvider(served + "/", SECRET, timeout_s=5)
    try:
        httpx.put(f"{served}/sim/script", json={TO: [{"outcome": "voicemail", "talk_ms": 30}]})
        attempt = uuid.uuid4()
        call_id = provider.place_call(call_request(attempt))
        assert call_id.startswith("CA")
        assert provider.place_call(call_request(attempt)) == call_id

        deadline = time.monotonic() + 5
        while (event := provider.fetch_call(attempt, call_id)) is None or not event.final:
            assert time.monotonic() < deadline, f"call never ended: {event}"
            time.sleep(0.01)
        assert (event.call_id, event.attempt_id, event.status) == (call_id, attempt, "completed")
        assert (event.answered_by, event.duration_s) == ("machine_start", 0.03)
        assert outcome_for(event.status, event.answered_by) == "voicemail"
        assert event.event_id == f"{call_id}:completed:fetch"
        assert provider.fetch_call(uuid.uuid4(), None) is None

        stats = httpx.get(f"{served}/sim/stats").json()
        assert (stats["calls_total"], stats["idempotent_replays"]) == (1, 1)
        [row] = httpx.get(f"{served}/sim/calls").json()
        assert (row["lead_id"], row["attempt_id"], row["outcome"]) == (3, str(attempt), "voicemail")

        deadline = time.monotonic() + 5
        while len(hook.events) < 4:
            assert time.monotonic() < deadline, "callbacks never arrived"
            time.sleep(0.01)
        assert hook.events[-1].status == "completed"
    finally:
        provider.close()


def test_adapter_raises_provider_error_on_rejection(served: str) -> None:
    provider = SimulatorProvider(served, SECRET)
    try:
        with pytest.raises(ProviderError, match=r"HTTP 422.*max_channels"):
            provider.place_call(call_request(uuid.uuid4(), max_channels=0))
    finally:
        provider.close()


def test_adapter_raises_provider_error_when_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connection refused
        provider = SimulatorProvider(f"http://127.0.0.1:{port}", SECRET, timeout_s=2)
        try:
            with pytest.raises(ProviderError, match="ConnectError"):
                provider.place_call(call_request(uuid.uuid4()))
            with pytest.raises(ProviderError):
                provider.fetch_call(uuid.uuid4(), None)
        finally:
            provider.close()


def signed(payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(payload).encode()
    return raw, {SIGNATURE_HEADER.lower(): sign(raw, SECRET)}


EVENT = {
    "event_id": "ev-1",
    "call_id": "CA1",
    "attempt_id": "6f1c1f0e-3c1e-4b7e-9a51-0f7f4c6c2b10",
    "status": "completed",
    "duration_s": 12.5,
    "answered_by": "human",
    "digits": "1",
    "timestamp": 1700000000.25,
}


def test_parse_callback_reads_a_signed_event() -> None:
    provider = SimulatorProvider("http://sim", SECRET)
    try:
        raw, headers = signed(EVENT)
        event = provider.parse_callback(raw, headers, HOOK)
        assert event.event_id == "ev-1"
        assert event.attempt_id == uuid.UUID(EVENT["attempt_id"])
        assert (event.status, event.final, event.duration_s) == ("completed", True, 12.5)
        assert (event.answered_by, event.digits, event.timestamp) == ("human", "1", 1700000000.25)
        progress = provider.parse_callback(*signed({**EVENT, "status": "ringing"}), HOOK)
        assert not progress.final
    finally:
        provider.close()


def test_parse_callback_rejects_missing_or_bad_signatures() -> None:
    provider = SimulatorProvider("http://sim", SECRET)
    try:
        raw, headers = signed(EVENT)
        with pytest.raises(BadSignature):
            provider.parse_callback(raw, {}, HOOK)
        with pytest.raises(BadSignature):
            provider.parse_callback(raw + b" ", headers, HOOK)
        with pytest.raises(BadSignature):
            provider.parse_callback(raw, {SIGNATURE_HEADER: sign(raw, "wrong")}, HOOK)
    finally:
        provider.close()


@pytest.mark.parametrize(
    "payload",
    [
        [EVENT],
        {**EVENT, "event_id": ""},
        {k: v for k, v in EVENT.items() if k != "call_id"},
        {**EVENT, "status": "exploded"},
        {**EVENT, "attempt_id": "nope"},
        {**EVENT, "duration_s": "12"},
        {**EVENT, "digits": 1},
    ],
)
def test_parse_callback_rejects_malformed_bodies(payload: Any) -> None:
    provider = SimulatorProvider("http://sim", SECRET)
    try:
        raw = json.dumps(payload).encode()
        with pytest.raises(ValueError):
            provider.parse_callback(raw, {SIGNATURE_HEADER: sign(raw, SECRET)}, HOOK)
        with pytest.raises(ValueError):
            provider.parse_callback(b"{", {SIGNATURE_HEADER: sign(b"{", SECRET)}, HOOK)
    finally:
        provider.close()
