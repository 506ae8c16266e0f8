"""The Twilio adapter: place calls, look them up and verify status callbacks with the SDK.

Twilio's call statuses are the vocabulary `base` already speaks, so events pass through
unchanged. Callbacks are tied back to our attempt by an `attempt_id` query parameter on
the status-callback URL; Twilio signs the full URL, query string included, so that id
cannot be forged without also forging the signature.
"""

from __future__ import annotations

import email.utils
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

from twilio.base.exceptions import TwilioException
from twilio.http import HttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

from dispatcher.telephony.base import BadSignature, CallEvent, CallRequest, ProviderError

SIGNATURE_HEADER = "X-Twilio-Signature"
STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]

# The Twilio client falls back to os.environ (TWILIO_REGION, TWILIO_EDGE, credentials)
# when handed an empty mapping; a non-empty one with blank values keeps settings.py the
# only module that reads the environment.
_NO_ENVIRONMENT = {"TWILIO_REGION": "", "TWILIO_EDGE": ""}

# What the SDK raises for an HTTP error (TwilioRestException, TwilioServiceException), a
# transport failure (requests' exceptions are OSErrors) or a 2xx body that is not JSON.
_TRANSPORT_ERRORS = (TwilioException, OSError, ValueError)


class _FormParams(dict[str, list[str]]):
    """Form fields with every value kept: Twilio signs each value of a repeated field,
    and `RequestValidator` reads them through `getlist` (the Django QueryDict shape)."""

    def getlist(self, name: str) -> list[str]:
        return self[name]

    def first(self, name: str) -> str | None:
        values = self.get(name)
        return values[0] if values else None


class TwilioProvider:
    """`Provider` backed by Twilio's Programmable Voice REST API."""

    name = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        answer_url: str | None = None,
        machine_detection: bool = True,
        timeout_s: float = 10.0,
        http_client: HttpClient | None = None,
    ) -> None:
        """`answer_url` serves the TwiML that runs the answered call (the voice agent);
        without it the call only speaks the payload's `message`. `http_client` replaces
        the SDK's transport, for tests."""
        self._validator = RequestValidator(auth_token)
        self._answer_url = answer_url
        self._machine_detection = machine_detection
        # No max_retries: a POST retried by the transport after a lost response could dial
        # the same person twice.
        self._http = http_client or TwilioHttpClient(timeout=timeout_s)
        self._client = Client(
            account_sid, auth_token, http_client=self._http, environment=_NO_ENVIRONMENT
        )

    def place_call(self, request: CallRequest) -> str:
        """Create the call; return its CallSid.

        Twilio has no idempotency key on call create: a repeated create is a second call.
        What stops a second dial is our attempt row, committed and guarded before this is
        called, plus the attempt id in the status-callback URL, which ties every callback
        to exactly that attempt, even for a call whose create response never reached us.
        So a ProviderError after a read timeout may hide a call that Twilio did place; its
        callbacks still find the attempt through the attempt id.
        """
        params: dict[str, Any] = {
            "to": request.to,
            "from_": request.from_,
            "status_callback": with_query(request.webhook_url, attempt_id=str(request.attempt_id)),
            "status_callback_event": STATUS_EVENTS,
            "status_callback_method": "POST",
        }
        if self._answer_url:
            params["url"] = with_query(
                self._answer_url,
                attempt_id=str(request.attempt_id),
                lead_id=str(request.lead_id),
            )
        else:
            params["twiml"] = _spoken_twiml(request.payload)
        if self._machine_detection:
            params["machine_detection"] = "Enable"
        try:
            call = self._client.calls.create(**params)
        except _TRANSPORT_ERRORS as exc:
            raise ProviderError(f"twilio call create failed: {exc}") from exc
        if not call.sid:
            raise ProviderError("twilio accepted the call create but returned no CallSid")
        return call.sid

    def fetch_call(self, attempt_id: uuid.UUID, call_id: str | None) -> CallEvent | None:
        """The call's status as Twilio reports it now; None when it has no such call."""
        if call_id is None:
            return None
        try:
            call = self._client.calls(call_id).fetch()
        except TwilioException as exc:
            if getattr(exc, "status", None) == 404:
                return None
            raise ProviderError(f"twilio call fetch failed: {exc}") from exc
        except _TRANSPORT_ERRORS as exc:
            raise ProviderError(f"twilio call fetch failed: {exc}") from exc
        status = (call.status or "").lower()
        updated = call.date_updated or call.end_time
        return CallEvent(
            event_id=f"{call.sid or call_id}:{status}:fetch",
            call_id=call.sid or call_id,
            attempt_id=attempt_id,
            status=status,
            duration_s=_float_or_none(call.duration),
            answered_by=call.answered_by or None,
            timestamp=updated.timestamp() if updated is not None else None,
        )

    def parse_callback(self, body: bytes, headers: Mapping[str, str], url: str) -> CallEvent:
        """Verify `X-Twilio-Signature` and read a form-encoded status callback.

        `url` must be the URL exactly as Twilio requested it (scheme, host, path and query
        of the public URL, not the one a proxy forwarded to), since Twilio signs that.
        """
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError("twilio callback body is not UTF-8") from exc
        # Blank fields stay: Twilio signs them too, dropping them breaks real signatures.
        params = _FormParams(parse_qs(text, keep_blank_values=True))
        signature = _header(headers, SIGNATURE_HEADER)
        if not signature or not self._validator.validate(url, params, signature):
            raise BadSignature("X-Twilio-Signature missing or does not match")

        call_id = params.first("CallSid")
        status = (params.first("CallStatus") or "").lower()
        if not call_id or not status:
            raise ValueError("twilio callback lacks CallSid or CallStatus")
        sequence = params.first("SequenceNumber") or ""
        digits = params.first("Digits") or None
        event_id = f"{call_id}:{status}:{sequence}"
        if digits is not None:
            event_id += f":{digits}"
        return CallEvent(
            event_id=event_id,
            call_id=call_id,
            attempt_id=_attempt_id(url),
            status=status,
            duration_s=_float_or_none(params.first("CallDuration")),
            answered_by=params.first("AnsweredBy") or None,
            digits=digits,
            timestamp=_rfc2822_or_none(params.first("Timestamp")),
        )

    def close(self) -> None:
        """Release the transport's pooled connections."""
        session = getattr(self._http, "session", None)
        if session is not None:
            session.close()


def with_query(url: str, **params: str) -> str:
    """`url` with `params` set in its query string, replacing any of the same name."""
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    return urlunsplit(parts._replace(query=urlencode([*kept, *params.items()])))


def _spoken_twiml(payload: Mapping[str, Any]) -> str:
    response = VoiceResponse()
    message = payload.get("message") or payload.get("alert_message")
    if isinstance(message, str) and message.strip():
        response.say(message)
    return str(response)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _attempt_id(url: str) -> uuid.UUID | None:
    values = parse_qs(urlsplit(url).query).get("attempt_id")
    if not values:
        return None
    try:
        return uuid.UUID(values[0])
    except ValueError as exc:
        raise ValueError(f"attempt_id in callback URL is not a UUID: {values[0]!r}") from exc


def _float_or_none(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _rfc2822_or_none(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
