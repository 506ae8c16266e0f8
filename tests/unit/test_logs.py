"""Phone numbers never reach a log line whole."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from dispatcher import logs


def test_mask_phone_keeps_last_four_digits_only() -> None:
    assert logs.mask_phone("+14155550123") == "+*******0123"
    assert (
        logs.mask_phone("to 14155550123 from +442071838750") == "to *******0123 from +********8750"
    )
    # Dates, ids and short numbers are left alone.
    assert logs.mask_phone("2026-11-25T13:00:00 lead 12345") == "2026-11-25T13:00:00 lead 12345"


def test_structured_log_lines_are_json_with_masked_phones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("INFO", json=True)
    try:
        structlog.get_logger("t").info("dialing", lead_id=42, attempt_id="a-1", to="+14155550123")
        line = capsys.readouterr().err.strip().splitlines()[-1]
        event = json.loads(line)
        assert event["event"] == "dialing" and event["lead_id"] == 42
        assert event["attempt_id"] == "a-1"
        assert event["to"] == "+*******0123"
        assert "4155550123" not in line
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
