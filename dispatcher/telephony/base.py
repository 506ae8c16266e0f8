"""The provider interface: place a call, look one up, read a status callback.

Call statuses follow Twilio's vocabulary (initiated, ringing, in-progress, then one final
status); `outcome_for` maps a final status to Switchboard's outcomes.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

# Progress statuses in the order a call goes through them; a lower rank never
# overwrites a higher one (a late "ringing" after "completed" is ignored).
PROGRESS_RANK = {"queued": 0, "initiated": 1, "ringing": 2, "in-progress": 3, "answered": 3}
FINAL_STATUSES = frozenset(
    {"completed", "busy", "no-answer", "failed", "canceled", "rejected", "invalid", "voicemail"}
)
FINAL_RANK = 4


class ProviderError(Exception):
    """The provider refused or could not be reached; no call was placed by this request."""


class CallStateUnknown(ProviderError):
    """The request may have reached the provider (it timed out after being sent): the
    call may be up. The attempt stays open until a callback or a status lookup settles
    it, so the lead is never dialed again on a guess."""


class BadSignature(Exception):
    """A callback whose signature does not verify: it is not from our provider."""


@dataclass(frozen=True)
class CallRequest:
    attempt_id: uuid.UUID  # also the provider's idempotency key
    lead_id: int
    to: str
    from_: str
    max_channels: int
    cps: float | None
    webhook_url: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CallEvent:
    """One status callback, or the answer to a status lookup."""

    event_id: str
    call_id: str
    attempt_id: uuid.UUID | None
    status: str
    duration_s: float | None = None
    answered_by: str | None = None
    digits: str | None = None
    timestamp: float | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def rank(self) -> int:
        return FINAL_RANK if self.final else PROGRESS_RANK.get(self.status, 0)


def outcome_for(status: str, answered_by: str | None = None) -> str:
    """Switchboard's outcome for a provider's final call status."""
    if status == "completed":
        return "voicemail" if (answered_by or "").startswith("machine") else "completed"
    return {
        "busy": "busy",
        "no-answer": "no_answer",
        "failed": "failed",
        "canceled": "canceled",
        "rejected": "rejected",
        "invalid": "invalid",
        "voicemail": "voicemail",
    }.get(status, "unknown")


class Provider(Protocol):
    name: str

    def place_call(self, request: CallRequest) -> str:
        """Ask for the call; return the provider's call id. Raises ProviderError."""
        ...

    def fetch_call(self, attempt_id: uuid.UUID, call_id: str | None) -> CallEvent | None:
        """The call's current status, or None when the provider never placed it."""
        ...

    def parse_callback(self, body: bytes, headers: Mapping[str, str], url: str) -> CallEvent:
        """Verify and parse a status callback. Raises BadSignature or ValueError."""
        ...
