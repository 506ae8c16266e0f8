"""The benchmark's engine-mode provider: every call is placed at once and ends at once,
completed, through the same code a provider's webhook runs (`callbacks.apply_event`).

Enabled only by SWITCHBOARD_INSTANT_PROVIDER (numbers with provider "instant"): it ends
calls nobody made, so it must never be reachable in a real deployment by accident.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

import structlog

from dispatcher.settings import Settings

if TYPE_CHECKING:
    from dispatcher.runtime import Runtime
from dispatcher.telephony.base import CallEvent, CallRequest

log = structlog.get_logger(__name__)
NAME = "instant"
ENDERS = 4  # threads applying the ends, as a webhook endpoint serves requests concurrently


class InstantProvider:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ended: queue.SimpleQueue[CallEvent] = queue.SimpleQueue()
        self._start = threading.Lock()
        self._threads: list[threading.Thread] = []

    def place_call(self, request: CallRequest) -> str:
        call_id = f"INST-{request.attempt_id.hex}"
        self._ended.put(CallEvent(f"{call_id}:completed", call_id, request.attempt_id, "completed"))
        with self._start:
            if not self._threads:
                self._threads = [
                    threading.Thread(target=self._end_calls, args=(rt,), daemon=True)
                    for rt in [self._runtime()] * ENDERS
                ]
                for thread in self._threads:
                    thread.start()
        return call_id

    def fetch_call(self, attempt_id: uuid.UUID, call_id: str | None) -> CallEvent | None:
        call_id = call_id or f"INST-{attempt_id.hex}"
        return CallEvent(f"{call_id}:completed", call_id, attempt_id, "completed")

    def parse_callback(self, body: bytes, headers: Mapping[str, str], url: str) -> CallEvent:
        raise NotImplementedError("the instant provider sends no callbacks")

    def _runtime(self) -> Runtime:
        """The webhook's connections, apart from the dispatcher's: ends never wait for a
        dispatch's pool connection."""
        from dispatcher.runtime import Runtime

        return Runtime.open(self._settings, providers={})

    def _end_calls(self, rt: Runtime) -> None:
        from dispatcher import callbacks

        while True:
            event = self._ended.get()
            try:
                callbacks.apply_event(rt, NAME, event)
            except Exception:
                log.exception("instant_end_failed", attempt_id=str(event.attempt_id))
