"""What happens to a lead after a call ended: the template's retry rules, as pure functions.

Kept free of I/O so the rules can be tested exhaustively; the lifecycle applies them.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dispatcher.windows import CallingWindow, NoAllowedInstant, is_allowed, next_allowed, zones_for

SUCCESS_OUTCOMES = frozenset({"answered", "completed"})
# A wrong or refused number does not get better by calling it again.
NEVER_RETRY = frozenset({"invalid", "rejected"})

DEFAULT_JITTER = 0.1  # ±10 %: retries of a burst of leads do not all land at once
CAP_WINDOW = dt.timedelta(hours=24)  # frequency caps count attempts over a rolling day

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


def max_attempts_for(lead_max: int | None, retry: Mapping[str, Any]) -> int:
    return int(lead_max or retry.get("max_attempts") or DEFAULT_RETRY["max_attempts"])


def retry_delay_s(
    retry: dict[str, Any], attempt_count: int, rng: random.Random | None = None
) -> float:
    """Delay before attempt `attempt_count + 1`: fixed, or doubling per attempt made."""
    base = float(retry.get("delay_s", DEFAULT_RETRY["delay_s"]))
    if retry.get("backoff") == "exponential":
        base *= 2 ** max(attempt_count - 1, 0)
    jitter = float(retry.get("jitter", DEFAULT_JITTER))
    if jitter and rng is not None:
        base *= 1 + rng.uniform(-jitter, jitter)
    return max(base, 0.0)


def after_call(
    outcome: str,
    attempt_count: int,
    max_attempts: int,
    retry: Mapping[str, Any],
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


# --- when a lead may be called ---------------------------------------------------------


def window_for(
    execution_mode: str, calling_window: Mapping[str, Any] | None
) -> CallingWindow | None:
    """The template's calling window; voice alerts call at any hour."""
    if execution_mode == "telephony_alert":
        return None
    return CallingWindow.from_json(calling_window)


def first_call_time(
    window: CallingWindow | None, timezone: str | None, phone: str, earliest: dt.datetime
) -> dt.datetime | None:
    """The first instant >= `earliest` inside the lead's calling window in every zone its
    number may ring in; None when there is none (the windows never overlap)."""
    try:
        return next_allowed(window, zones_for(timezone, phone), earliest)
    except NoAllowedInstant:
        return None


def may_call_now(
    window: CallingWindow | None, timezone: str | None, phone: str, now: dt.datetime
) -> bool:
    return is_allowed(window, zones_for(timezone, phone), now)


def retry_earliest(
    retry: Mapping[str, Any], now: dt.datetime, delay_s: float, last_started_at: dt.datetime
) -> dt.datetime:
    """`now + delay`, and with `retry.spread_hours` at least that long after the last
    unanswered attempt, so that retries land at a different time of day."""
    earliest = now + dt.timedelta(seconds=delay_s)
    spread = retry.get("spread_hours")
    if spread:
        earliest = max(earliest, last_started_at + dt.timedelta(hours=float(spread)))
    return earliest


def frequency_cap_frees_at(
    cap: Mapping[str, Any] | None, recent_starts: Sequence[dt.datetime]
) -> dt.datetime | None:
    """With `recent_starts` the start times of this phone's attempts (same reseller) in
    the last 24 h, newest first: None when another call is allowed now, else the moment
    the oldest of the `per_phone_per_day` most recent ones leaves the 24 h window."""
    if not cap or not cap.get("per_phone_per_day"):
        return None
    limit = int(cap["per_phone_per_day"])
    if len(recent_starts) < limit:
        return None
    return recent_starts[limit - 1] + CAP_WINDOW
