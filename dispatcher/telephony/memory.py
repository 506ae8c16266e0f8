"""An in-process provider: places nothing, remembers every request.

Unit and integration tests use it in place of a real provider; the engine-only
benchmark uses it to end each call at once through the same lifecycle code.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from dispatcher.telephony.base import CallEvent, CallRequest, CallStateUnknown, ProviderError


@dataclass
class InMemoryProvider:
    name: str = "simulator"
    # Raise ProviderError for the next N place_call requests.
    fail_next: int = 0
    # Place the next N calls but answer as if the response was lost (a timeout).
    lose_answer_next: int = 0
    requests: list[CallRequest] = field(default_factory=list)
    calls: dict[uuid.UUID, CallEvent] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def place_call(self, request: CallRequest) -> str:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                raise ProviderError("scripted failure")
            self.requests.append(request)
            existing = self.calls.get(request.attempt_id)
            if existing is not None:
                return existing.call_id
            call_id = f"MEM{next(self._ids)}-{uuid.uuid4().hex[:8]}"  # unique like a real one
            self.calls[request.attempt_id] = CallEvent(
                f"{call_id}:initiated", call_id, request.attempt_id, "initiated"
            )
            if self.lose_answer_next > 0:
                self.lose_answer_next -= 1
                raise CallStateUnknown("scripted lost answer")
            return call_id

    def finish(self, attempt_id: uuid.UUID, status: str, **kw: object) -> CallEvent:
        """End a placed call as the provider would; returns its final event."""
        with self._lock:
            call = self.calls[attempt_id]
            final = CallEvent(f"{call.call_id}:{status}", call.call_id, attempt_id, status, **kw)  # type: ignore[arg-type]
            self.calls[attempt_id] = final
            return final

    def fetch_call(self, attempt_id: uuid.UUID, call_id: str | None) -> CallEvent | None:
        with self._lock:
            return self.calls.get(attempt_id)

    def parse_callback(self, body: bytes, headers: Mapping[str, str], url: str) -> CallEvent:
        raise ValueError("the in-memory provider sends no callbacks")
