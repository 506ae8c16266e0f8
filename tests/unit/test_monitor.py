"""The health monitor's state machine, without I/O: each condition alerts once when it
starts, stays quiet while it holds, reports its recovery, and alerts again only after
that; the conditions are independent; delivery never raises."""

from __future__ import annotations

import dataclasses

import pytest

from dispatcher import monitor
from dispatcher.monitor import (
    DUE_BACKLOG,
    FIRING,
    NO_WORKERS,
    OLDEST_DUE,
    RECOVERED,
    STUCK_CALLS,
    Facts,
    MemoryActive,
    Monitor,
    Thresholds,
    Transition,
)
from dispatcher.settings import Settings

LIMITS = Thresholds(due_backlog=200, oldest_due_s=300.0, stuck_after_s=3720.0, heartbeat_stale_s=10)
HEALTHY = Facts(due_leads=0, oldest_due_s=0.0, stuck_calls=0, workers_alive=2)


def facts(**changes: float) -> Facts:
    return dataclasses.replace(HEALTHY, **changes)


def seen(transitions: list[Transition]) -> list[tuple[str, str]]:
    return [(t.condition, t.state) for t in transitions]


def test_the_backlog_fires_once_recovers_and_fires_again_after_crossing_again() -> None:
    m = Monitor(LIMITS)

    assert m.check(facts(due_leads=150)) == []
    first = m.check(facts(due_leads=201))
    assert seen(first) == [(DUE_BACKLOG, FIRING)]
    assert "201 leads are due" in first[0].message
    assert first[0].details == {"due_leads": 201, "limit": 200}
    assert m.check(facts(due_leads=500)) == []  # still over: no second page
    assert m.check(facts(due_leads=250)) == []
    recovered = m.check(facts(due_leads=12))
    assert seen(recovered) == [(DUE_BACKLOG, RECOVERED)]
    assert recovered[0].message.startswith("Switchboard recovered:")
    assert m.check(facts(due_leads=12)) == []  # a recovery is reported once too
    assert seen(m.check(facts(due_leads=300))) == [(DUE_BACKLOG, FIRING)]


def test_the_backlog_threshold_is_exclusive() -> None:
    m = Monitor(LIMITS)

    assert m.check(facts(due_leads=200)) == []
    assert seen(m.check(facts(due_leads=201))) == [(DUE_BACKLOG, FIRING)]


def test_a_healthy_system_never_transitions() -> None:
    m = Monitor(LIMITS)

    for _ in range(3):
        assert m.check(HEALTHY) == []


@pytest.mark.parametrize(
    ("condition", "bad"),
    [
        (DUE_BACKLOG, {"due_leads": 201}),
        (OLDEST_DUE, {"oldest_due_s": 301.0}),
        (STUCK_CALLS, {"stuck_calls": 1}),
        (NO_WORKERS, {"workers_alive": 0}),
    ],
)
def test_each_condition_fires_and_recovers_alone(condition: str, bad: dict[str, float]) -> None:
    m = Monitor(LIMITS)

    assert seen(m.check(facts(**bad))) == [(condition, FIRING)]
    assert m.check(facts(**bad)) == []
    assert seen(m.check(HEALTHY)) == [(condition, RECOVERED)]


def test_conditions_are_independent() -> None:
    m = Monitor(LIMITS)

    assert seen(m.check(facts(due_leads=900))) == [(DUE_BACKLOG, FIRING)]
    # Another starts while the first holds: only the new one is reported.
    assert seen(m.check(facts(due_leads=900, workers_alive=0))) == [(NO_WORKERS, FIRING)]
    # The first recovers while the second holds.
    assert seen(m.check(facts(workers_alive=0))) == [(DUE_BACKLOG, RECOVERED)]
    assert seen(m.check(facts(workers_alive=0, oldest_due_s=999.0))) == [(OLDEST_DUE, FIRING)]
    assert sorted(seen(m.check(HEALTHY))) == [(NO_WORKERS, RECOVERED), (OLDEST_DUE, RECOVERED)]


def test_two_monitors_sharing_the_active_set_fire_once() -> None:
    """Two schedulers (or one restarted) share the set: whoever adds first takes it."""
    shared = MemoryActive()
    a, b = Monitor(LIMITS, shared), Monitor(LIMITS, shared)

    assert seen(a.check(facts(stuck_calls=3))) == [(STUCK_CALLS, FIRING)]
    assert b.check(facts(stuck_calls=3)) == []
    assert seen(b.check(HEALTHY)) == [(STUCK_CALLS, RECOVERED)]
    assert a.check(HEALTHY) == []


def test_thresholds_come_from_the_settings() -> None:
    s = Settings.load(
        {
            "SWITCHBOARD_MONITOR_DUE_BACKLOG": "7",
            "SWITCHBOARD_MONITOR_OLDEST_DUE_S": "30",
            "SWITCHBOARD_MONITOR_STUCK_MARGIN_S": "5",
            "SWITCHBOARD_MAX_CALL_S": "100",
            "SWITCHBOARD_CALL_GRACE_S": "10",
        }
    )

    assert Thresholds.from_settings(s) == Thresholds(7, 30.0, 115.0, s.heartbeat_stale_s)
    defaults = Settings()
    assert (defaults.monitor_due_backlog, defaults.monitor_oldest_due_s) == (200, 300.0)
    assert defaults.monitor_interval_s == 10.0
    assert defaults.monitor_reseller is defaults.monitor_group is None
    assert defaults.monitor_webhook_url is None


def firing(condition: str = DUE_BACKLOG) -> Transition:
    return Transition(condition, FIRING, "Switchboard alert: x", {"due_leads": 201})


def test_deliver_calls_the_group_only_for_a_start_and_posts_both() -> None:
    fired: list[tuple[str, str]] = []
    posted: list[Transition] = []
    recovered = Transition(DUE_BACKLOG, RECOVERED, "Switchboard recovered: y", {"due_leads": 3})

    monitor.deliver([firing(), recovered], lambda c, m: fired.append((c, m)), posted.append)

    assert fired == [(DUE_BACKLOG, "Switchboard alert: x")]
    assert [(t.state, t.details) for t in posted] == [
        (FIRING, {"due_leads": 201, "voice_alert": "sent"}),
        (RECOVERED, {"due_leads": 3}),
    ]


def test_a_failing_voice_alert_is_logged_and_still_reaches_the_webhook() -> None:
    posted: list[Transition] = []

    def broken(condition: str, message: str) -> None:
        raise RuntimeError("alert service down")

    monitor.deliver([firing(NO_WORKERS), firing(STUCK_CALLS)], broken, posted.append)

    assert [(t.condition, t.details["voice_alert"]) for t in posted] == [
        (NO_WORKERS, "failed"),
        (STUCK_CALLS, "failed"),
    ]


def test_nothing_configured_means_no_voice_alert_and_no_webhook() -> None:
    class Rt:
        settings = Settings(monitor_reseller="r1")  # a reseller without a group

    assert monitor.alert_firer(Rt()) is None  # type: ignore[arg-type]
    assert monitor.webhook_notifier(Settings()) is None
    assert monitor.webhook_notifier(Settings(monitor_webhook_url="http://x/hook")) is not None
    assert monitor.alert_id(NO_WORKERS) == "switchboard-health:no_workers"


def test_an_unreachable_webhook_is_logged_not_raised() -> None:
    # Port 9 on localhost (discard) is closed: the connection is refused at once.
    assert monitor.post_webhook("http://127.0.0.1:9/hook", firing(), 0.5) is False
