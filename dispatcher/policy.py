"""What happens to a lead after a call ended: the template's retry rules, as pure functions.

Kept free of I/O so the rules can be tested exhaustively; the lifecycle applies them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

SUCCESS_OUTCOMES = frozenset({"answered", "completed"})
# A wrong or refused number does not get better by calling it again.
NEVER_RETRY = frozenset({"invalid", "rejected"})

DEFAULT_RETRY: dict[str, Any] = {
    "max_attempts": 3,
    "retry_on": ["busy", "no_answer", "failed", "voicemail"],
    "delay_s": 7200,
    "backoff": "fixed",
}


@dataclass(frozen=True)
class NextStep:
    status: str  # COMPLETED, FAILED or BACKLOG
    delay_s: float | None = None  # for BACKLOG: seconds from now until the next attempt


def max_attempts_for(lead_max: int | None, retry: dict[str, Any]) -> int:
    return int(lead_max or retry.get("max_attempts") or DEFAULT_RETRY["max_attempts"])


def retry_delay_s(
    retry: dict[str, Any], attempt_count: int, rng: random.Random | None = None
) -> float:
    """Delay before attempt `attempt_count + 1`: fixed, or doubling per attempt made."""
    base = float(retry.get("delay_s", DEFAULT_RETRY["delay_s"]))
    if retry.get("backoff") == "exponential":
        base *= 2 ** max(attempt_count - 1, 0)
    jitter = float(retry.get("jitter", 0.0))
    if jitter and rng is not None:
        base *= 1 + rng.uniform(-jitter, jitter)
    return max(base, 0.0)


def after_call(
    outcome: str,
    attempt_count: int,
    max_attempts: int,
    retry: dict[str, Any],
    rng: random.Random | None = None,
) -> NextStep:
    """The lead's next status after its `attempt_count`-th call ended with `outcome`."""
    if outcome in SUCCESS_OUTCOMES:
        return NextStep("COMPLETED")
    if outcome in NEVER_RETRY:
        return NextStep("FAILED")
    retry_on = retry.get("retry_on", DEFAULT_RETRY["retry_on"])
    if outcome in retry_on and attempt_count < max_attempts:
        return NextStep("BACKLOG", retry_delay_s(retry, attempt_count, rng))
    return NextStep("FAILED")
