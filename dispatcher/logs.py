"""Structured logs for every process: JSON lines with lead and attempt ids, phones masked."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# E.164 numbers, or bare runs of 10-15 digits, anywhere in a log value (dates and ids
# with separators do not match): keep the last four digits only.
_PHONE = re.compile(r"\+\d{7,15}\b|\b\d{10,15}\b")


_STARS = str.maketrans("0123456789", "*" * 10)


def mask_phone(value: str) -> str:
    """'+14155550123' → '+*******0123': enough to tell calls apart, not to dial."""

    def _mask(match: re.Match[str]) -> str:
        text = match.group()
        return text[:-4].translate(_STARS) + text[-4:]

    return _PHONE.sub(_mask, value)


def _mask_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str) and key not in ("lead_id", "attempt_id", "timestamp"):
            event[key] = mask_phone(value)
    return event


def configure(level: str = "INFO", json: bool = True) -> None:
    """Route structlog and stdlib logging (Dramatiq, uvicorn) through one renderer."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _mask_event,
    ]
    structlog.configure(
        # Drop events below the level before any processor runs: at a thousand calls a
        # second the skipped timestamps and masking are a real share of a worker's CPU.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One line per HTTP request made is noise at INFO (the simulator posts thousands).
    logging.getLogger("httpx").setLevel(logging.WARNING)
