"""The Twilio adapter against the real SDK, with an in-memory transport instead of the network.

Signatures are computed by the SDK's own `RequestValidator`, so a test passes only when
our verification agrees with what Twilio would send.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from twilio.http import HttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator

from dispatcher.telephony.base import BadSignature, CallRequest, ProviderError, outcome_for
from dispatcher.telephony.twilio import TwilioProvider, with_query

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
CALL_SID = "CA" + "1" * 32
ATTEMPT_ID = uuid.UUID("6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f")
WEBHOOK = "https://switchboard.example.com/v1/webhooks/twilio"
CALLBACK_URL = f"{WEBHOOK}?attempt_id={ATTEMPT_ID}"


@dataclass
class Recorded:
    method: str
    url: str
    data: dict[str, object] | None
    auth: tuple[str, str] | None
    timeout: float | None


class FakeTwilioHttp(HttpClient):
    """The SDK's transport seam: records each request and answers from a queue."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("fake-twilio"), is_async=False, timeout=None)
        self.requests: list[Recorded] = []
        self.replies: list[Response | Exception] = []

    def reply(self, status: int, body: dict[str, Any]) -> None:
        self.replies.append(Response(status, json.dumps(body)))

    def request(  # type: ignore[override]
        self,
        method: str,
        uri: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        self.requests.append(Recorded(method, uri, data, auth, timeout))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def call_json(status: str = "queued", **extra: Any) -> dict[str, Any]:
    return {
        "sid": CALL_SID,
        "account_sid": ACCOUNT_SID,
        "status": status,
        "to": "+14155550123",
        "from": "+14155550100",
        "duration": None,
        "answered_by": None,
        "date_updated": "Tue, 05 Mar 2024 10:00:07 +0000",
        **extra,
    }


@pytest.fixture
def http() -> FakeTwilioHttp:
    return FakeTwilioHttp()


@pytest.fixture
def provider(http: FakeTwilioHttp) -> TwilioProvider:
    return TwilioProvider(ACCOUNT_SID, AUTH_TOKEN, http_client=http)


def call_request(**overrides: Any) -> CallRequest:
    values: dict[str, Any] = {
        "attempt_id": ATTEMPT_ID,
        "lead_id": 42,
        "to": "+14155550123",
        "from_": "+14155550100",
        "max_channels": 2,
        "cps": None,
        "webhook_url": WEBHOOK,
    }
    return CallRequest(**(values | overrides))


# --- place_call ---------------------------------------------------------------------------


def test_place_call_posts_the_call_with_status_callbacks_tied_to_the_attempt(
    provider: TwilioProvider, http: FakeTwilioHttp
) -> None:
    http.reply(201, call_json())

    assert provider.place_call(call_request()) == CALL_SID

    (sent,) = http.requests
    assert sent.method == "POST"
    assert sent.url == f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"
    assert sent.auth == (ACCOUNT_SID, AUTH_TOKEN)
    data = sent.data or {}
    assert data["To"] == "+14155550123"
    assert data["From"] == "+14155550100"
    assert data["StatusCallback"] == CALLBACK_URL
    assert data["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert data["StatusCallbackMethod"] == "POST"
    assert data["MachineDetection"] == "Enable"
    assert "Url" not in data
    assert data["Twiml"].startswith("<?xml")


def test_place_call_uses_the_answer_url_and_can_skip_machine_detection(
    http: FakeTwilioHttp,
) -> None:
    provider = TwilioProvider(
        ACCOUNT_SID,
        AUTH_TOKEN,
        answer_url="https://agent.example.com/twiml?voice=alice",
        machine_detection=False,
        http_client=http,
    )
    http.reply(201, call_json())

    provider.place_call(call_request())

    data = http.requests[0].data or {}
    url = urlsplit(str(data["Url"]))
    assert url.netloc == "agent.example.com"
    assert url.path == "/twiml"
    assert parse_qs(url.query) == {
        "voice": ["alice"],
        "attempt_id": [str(ATTEMPT_ID)],
        "lead_id": ["42"],
    }
    assert "Twiml" not in data
    assert "MachineDetection" not in data


def test_without_an_answer_url_the_call_speaks_the_payload_message(
    provider: TwilioProvider, http: FakeTwilioHttp
) -> None:
    http.reply(201, call_json())

    provider.place_call(call_request(payload={"message": "Disk <full> & on fire"}))

    twiml = str((http.requests[0].data or {})["Twiml"])
    assert "<Say>Disk &lt;full&gt; &amp; on fire</Say>" in twiml


def test_an_attempt_id_already_in_the_webhook_url_is_replaced_not_doubled(
    provider: TwilioProvider, http: FakeTwilioHttp
) -> None:
    http.reply(201, call_json())
    stale = uuid.uuid4()

    provider.place_call(call_request(webhook_url=f"{WEBHOOK}?x=1&attempt_id={stale}"))

    sent = urlsplit(str((http.requests[0].data or {})["StatusCallback"]))
    assert parse_qs(sent.query) == {"x": ["1"], "attempt_id": [str(ATTEMPT_ID)]}


@pytest.mark.parametrize(
    "failure",
    [
        Response(400, json.dumps({"code": 21211, "message": "Invalid 'To'", "status": 400})),
        Response(503, "upstream unavailable"),
        Response(
            429,
            json.dumps(
                {"type": "https://x", "title": "Too Many Requests", "status": 429, "code": 20429}
            ),
        ),
        Response(201, "<html>not json</html>"),
        requests.ConnectionError("connection refused"),
        requests.ReadTimeout("read timed out"),
    ],
    ids=["rest-400", "non-json-503", "rfc9457-429", "garbled-2xx", "connect", "timeout"],
)
def test_place_call_turns_twilio_and_transport_errors_into_provider_error(
    provider: TwilioProvider, http: FakeTwilioHttp, failure: Response | Exception
) -> None:
    http.replies.append(failure)

    with pytest.raises(ProviderError):
        provider.place_call(call_request())


def test_the_timeout_reaches_the_default_transport() -> None:
    provider = TwilioProvider(ACCOUNT_SID, AUTH_TOKEN, timeout_s=2.5)
    try:
        assert provider._http.timeout == 2.5
    finally:
        provider.close()


def test_twilio_variables_in_the_process_environment_are_not_read(
    http: FakeTwilioHttp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # settings.py is the one reader of the environment; the SDK would otherwise route
    # every request to another region on a stray TWILIO_REGION.
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    provider = TwilioProvider(ACCOUNT_SID, AUTH_TOKEN, http_client=http)
    http.reply(201, call_json())

    provider.place_call(call_request())

    assert urlsplit(http.requests[0].url).netloc == "api.twilio.com"


def test_with_query_keeps_other_parameters() -> None:
    assert with_query("https://h/p?a=1&b=", b="2", c="3") == "https://h/p?a=1&b=2&c=3"


# --- fetch_call ---------------------------------------------------------------------------


def test_fetch_call_maps_the_call_resource(provider: TwilioProvider, http: FakeTwilioHttp) -> None:
    http.reply(200, call_json("completed", duration="37", answered_by="machine_start"))

    event = provider.fetch_call(ATTEMPT_ID, CALL_SID)

    assert event is not None
    assert http.requests[0].method == "GET"
    assert http.requests[0].url.endswith(f"/Calls/{CALL_SID}.json")
    assert event.call_id == CALL_SID
    assert event.attempt_id == ATTEMPT_ID
    assert event.status == "completed"
    assert event.final
    assert event.duration_s == 37.0
    assert event.answered_by == "machine_start"
    assert event.timestamp == 1709632807.0  # 2024-03-05T10:00:07Z
    assert outcome_for(event.status, event.answered_by) == "voicemail"


def test_fetch_call_of_a_call_in_progress_is_not_final(
    provider: TwilioProvider, http: FakeTwilioHttp
) -> None:
    http.reply(200, call_json("in-progress"))

    event = provider.fetch_call(ATTEMPT_ID, CALL_SID)

    assert event is not None
    assert not event.final
    assert event.duration_s is None


def test_fetch_call_without_a_call_id_asks_nobody(
    provider: TwilioProvider, http: FakeTwilioHttp
) -> None:
    assert provider.fetch_call(ATTEMPT_ID, None) is None
    assert http.requests == []


@pytest.mark.parametrize(
    "body",
    [
        {"code": 20404, "message": "The requested resource was not found", "status": 404},
        {"type": "https://x", "title": "Not Found", "status": 404, "code": 20404},
    ],
    ids=["legacy", "rfc9457"],
)
def test_fetch_call_of_an_unknown_call_is_none(
    provider: TwilioProvider, http: FakeTwilioHttp, body: dict[str, Any]
) -> None:
    http.reply(404, body)

    assert provider.fetch_call(ATTEMPT_ID, CALL_SID) is None


@pytest.mark.parametrize(
    "failure",
    [Response(500, "oops"), Response(401, "{}"), requests.ConnectionError("down")],
    ids=["500", "401", "transport"],
)
def test_fetch_call_errors_other_than_not_found_are_provider_errors(
    provider: TwilioProvider, http: FakeTwilioHttp, failure: Response | Exception
) -> None:
    http.replies.append(failure)

    with pytest.raises(ProviderError):
        provider.fetch_call(ATTEMPT_ID, CALL_SID)


# --- parse_callback -------------------------------------------------------------------------


def callback_fields(status: str = "completed", **extra: str) -> dict[str, str]:
    return {
        "AccountSid": ACCOUNT_SID,
        "CallSid": CALL_SID,
        "CallStatus": status,
        "From": "+14155550100",
        "To": "+14155550123",
        "Direction": "outbound-api",
        "ForwardedFrom": "",  # Twilio sends blank fields, and signs them
        "SequenceNumber": "3",
        "Timestamp": "Tue, 05 Mar 2024 10:00:07 +0000",
        **extra,
    }


def signed(fields: dict[str, str], url: str = CALLBACK_URL) -> tuple[bytes, dict[str, str]]:
    """A callback as Twilio sends it: form body, signature by the SDK over URL + fields."""
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, fields)
    return urlencode(fields).encode(), {"X-Twilio-Signature": signature}


def test_a_validly_signed_callback_is_parsed(provider: TwilioProvider) -> None:
    body, headers = signed(callback_fields("completed", CallDuration="12", AnsweredBy="human"))

    event = provider.parse_callback(body, headers, CALLBACK_URL)

    assert event.call_id == CALL_SID
    assert event.attempt_id == ATTEMPT_ID
    assert event.status == "completed"
    assert event.duration_s == 12.0
    assert event.answered_by == "human"
    assert event.digits is None
    assert event.timestamp == 1709632807.0
    assert event.event_id == f"{CALL_SID}:completed:3"
    assert outcome_for(event.status, event.answered_by) == "completed"


def test_header_names_match_case_insensitively(provider: TwilioProvider) -> None:
    body, headers = signed(callback_fields())
    lowered = {k.lower(): v for k, v in headers.items()}

    assert provider.parse_callback(body, lowered, CALLBACK_URL).call_id == CALL_SID


def test_a_signature_over_the_url_with_its_port_is_accepted(provider: TwilioProvider) -> None:
    # Twilio signs with or without the default port; the SDK accepts either form.
    body, headers = signed(
        callback_fields(),
        url=f"https://switchboard.example.com:443/v1/webhooks/twilio?attempt_id={ATTEMPT_ID}",
    )

    assert provider.parse_callback(body, headers, CALLBACK_URL).attempt_id == ATTEMPT_ID


def test_repeated_form_fields_are_verified_with_every_value(provider: TwilioProvider) -> None:
    url = CALLBACK_URL
    pairs = [*callback_fields().items(), ("StirVerstat", "A"), ("StirVerstat", "B")]
    multi: dict[str, list[str]] = {}
    for key, value in pairs:
        multi.setdefault(key, []).append(value)

    class _MultiDict(dict[str, list[str]]):
        def getlist(self, name: str) -> list[str]:
            return self[name]

    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, _MultiDict(multi))
    body = urlencode(pairs).encode()

    event = provider.parse_callback(body, {"X-Twilio-Signature": signature}, url)

    assert event.status == "completed"


@pytest.mark.parametrize("field", ["CallStatus", "CallDuration", "To"])
def test_a_tampered_body_is_rejected(provider: TwilioProvider, field: str) -> None:
    fields = callback_fields("busy", CallDuration="0")
    _, headers = signed(fields)
    tampered = fields | {field: "in-progress" if field == "CallStatus" else "999"}

    with pytest.raises(BadSignature):
        provider.parse_callback(urlencode(tampered).encode(), headers, CALLBACK_URL)


def test_an_added_field_is_rejected(provider: TwilioProvider) -> None:
    fields = callback_fields("no-answer")
    _, headers = signed(fields)
    body = urlencode(fields | {"AnsweredBy": "human"}).encode()

    with pytest.raises(BadSignature):
        provider.parse_callback(body, headers, CALLBACK_URL)


@pytest.mark.parametrize(
    "url",
    [
        f"{WEBHOOK}?attempt_id={uuid.uuid4()}",
        f"https://evil.example.com/v1/webhooks/twilio?attempt_id={ATTEMPT_ID}",
        WEBHOOK,
    ],
    ids=["other-attempt", "other-host", "no-query"],
)
def test_a_tampered_url_is_rejected(provider: TwilioProvider, url: str) -> None:
    body, headers = signed(callback_fields())

    with pytest.raises(BadSignature):
        provider.parse_callback(body, headers, url)


@pytest.mark.parametrize("headers", [{}, {"X-Twilio-Signature": ""}], ids=["missing", "empty"])
def test_a_missing_signature_is_rejected(provider: TwilioProvider, headers: dict[str, str]) -> None:
    body, _ = signed(callback_fields())

    with pytest.raises(BadSignature):
        provider.parse_callback(body, headers, CALLBACK_URL)


def test_a_signature_made_with_another_token_is_rejected(provider: TwilioProvider) -> None:
    fields = callback_fields()
    signature = RequestValidator("someone-else").compute_signature(CALLBACK_URL, fields)

    with pytest.raises(BadSignature):
        provider.parse_callback(
            urlencode(fields).encode(), {"X-Twilio-Signature": signature}, CALLBACK_URL
        )


def test_a_signed_callback_without_call_sid_is_invalid(provider: TwilioProvider) -> None:
    fields = callback_fields()
    del fields["CallSid"]
    body, headers = signed(fields)

    with pytest.raises(ValueError):
        provider.parse_callback(body, headers, CALLBACK_URL)


def test_a_body_that_is_not_utf8_is_invalid(provider: TwilioProvider) -> None:
    with pytest.raises(ValueError):
        provider.parse_callback(b"CallSid=\xff\xfe", {"X-Twilio-Signature": "x"}, CALLBACK_URL)


def test_a_callback_url_without_attempt_id_still_parses(provider: TwilioProvider) -> None:
    body, headers = signed(callback_fields(), url=WEBHOOK)

    assert provider.parse_callback(body, headers, WEBHOOK).attempt_id is None


def test_the_same_callback_twice_has_the_same_event_id(provider: TwilioProvider) -> None:
    body, headers = signed(callback_fields("ringing", SequenceNumber="1"))

    first = provider.parse_callback(body, headers, CALLBACK_URL)
    again = provider.parse_callback(body, headers, CALLBACK_URL)

    assert first.event_id == again.event_id


def test_different_steps_of_one_call_have_different_event_ids(provider: TwilioProvider) -> None:
    ids = set()
    for seq, status in enumerate(["initiated", "ringing", "in-progress", "completed"]):
        body, headers = signed(callback_fields(status, SequenceNumber=str(seq)))
        ids.add(provider.parse_callback(body, headers, CALLBACK_URL).event_id)

    assert len(ids) == 4


def test_a_key_press_is_its_own_event(provider: TwilioProvider) -> None:
    plain_body, plain_headers = signed(callback_fields("in-progress", SequenceNumber=""))
    press_body, press_headers = signed(
        callback_fields("in-progress", SequenceNumber="", Digits="1")
    )

    plain = provider.parse_callback(plain_body, plain_headers, CALLBACK_URL)
    press = provider.parse_callback(press_body, press_headers, CALLBACK_URL)

    assert press.digits == "1"
    assert plain.digits is None
    assert press.event_id != plain.event_id


@pytest.mark.parametrize(
    ("status", "answered_by", "final", "outcome"),
    [
        ("queued", None, False, None),
        ("initiated", None, False, None),
        ("ringing", None, False, None),
        ("in-progress", "human", False, None),
        ("completed", "human", True, "completed"),
        ("completed", "unknown", True, "completed"),
        ("completed", "machine_start", True, "voicemail"),
        ("completed", "machine_end_beep", True, "voicemail"),
        ("busy", None, True, "busy"),
        ("no-answer", None, True, "no_answer"),
        ("failed", None, True, "failed"),
        ("canceled", None, True, "canceled"),
    ],
)
def test_twilio_statuses_map_to_events_and_outcomes(
    provider: TwilioProvider,
    status: str,
    answered_by: str | None,
    final: bool,
    outcome: str | None,
) -> None:
    extra = {"AnsweredBy": answered_by} if answered_by else {}
    body, headers = signed(callback_fields(status, **extra))

    event = provider.parse_callback(body, headers, CALLBACK_URL)

    assert event.status == status
    assert event.answered_by == answered_by
    assert event.final is final
    if outcome is not None:
        assert outcome_for(event.status, event.answered_by) == outcome
    else:
        assert event.rank < 4


def test_progress_events_rank_in_call_order(provider: TwilioProvider) -> None:
    ranks = []
    for status in ["initiated", "ringing", "in-progress", "completed"]:
        body, headers = signed(callback_fields(status))
        ranks.append(provider.parse_callback(body, headers, CALLBACK_URL).rank)

    assert ranks == sorted(ranks)
    assert len(set(ranks)) == 4
