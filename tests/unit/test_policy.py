"""The retry rules, without any I/O."""

from __future__ import annotations

import random

import pytest

from dispatcher.policy import DEFAULT_RETRY, NextStep, after_call, max_attempts_for, retry_delay_s

RETRY = {"max_attempts": 3, "retry_on": ["busy", "no_answer"], "delay_s": 60, "backoff": "fixed"}


@pytest.mark.parametrize("outcome", ["answered", "completed"])
def test_success_completes_whatever_the_count(outcome: str) -> None:
    assert after_call(outcome, 3, 3, RETRY) == NextStep("COMPLETED")


@pytest.mark.parametrize("outcome", ["invalid", "rejected"])
def test_invalid_and_rejected_never_retry(outcome: str) -> None:
    retry = {**RETRY, "retry_on": ["invalid", "rejected"]}
    assert after_call(outcome, 1, 3, retry) == NextStep("FAILED")


def test_retryable_outcome_retries_until_attempts_are_used_up() -> None:
    assert after_call("busy", 1, 3, RETRY) == NextStep("BACKLOG", 60.0)
    assert after_call("busy", 2, 3, RETRY) == NextStep("BACKLOG", 60.0)
    assert after_call("busy", 3, 3, RETRY) == NextStep("FAILED")


def test_outcome_not_in_retry_on_fails() -> None:
    assert after_call("voicemail", 1, 3, RETRY) == NextStep("FAILED")


def test_exponential_backoff_doubles_per_attempt() -> None:
    retry = {**RETRY, "backoff": "exponential", "delay_s": 10}
    assert [retry_delay_s(retry, n) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]


def test_jitter_stays_within_its_bounds() -> None:
    retry = {**RETRY, "delay_s": 100, "jitter": 0.1}
    rng = random.Random(1)
    delays = [retry_delay_s(retry, 1, rng) for _ in range(200)]
    assert all(90 <= d <= 110 for d in delays) and len(set(delays)) > 100


def test_lead_max_attempts_overrides_template() -> None:
    assert max_attempts_for(5, RETRY) == 5
    assert max_attempts_for(None, RETRY) == 3
    assert max_attempts_for(None, {}) == DEFAULT_RETRY["max_attempts"]
