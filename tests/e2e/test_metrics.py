"""Metrics and /health of real processes: 50 leads through the API, the scheduler, two
workers and the simulator (duplicated and dropped callbacks, one forged), then what each
process's /metrics says must add up to what PostgreSQL and the simulator recorded."""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Iterable

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.telephony.signing import SIGNATURE_HEADER
from tests.e2e.harness import NUMBERS, System, final_count, set_up_world, wait_until

N_LEADS = 50
Labels = tuple[tuple[str, str], ...]
Samples = Counter[tuple[str, Labels]]


def scrape(url: str) -> Samples:
    """Every sample of one target, keyed by (name, sorted labels)."""
    text = httpx.get(url, timeout=5).text
    samples: Samples = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] += s.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of `name` over the samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, ls), v in samples.items():
        if n == name:
            key = dict(ls)[label]
            out[key] = out.get(key, 0.0) + v
    return out


def merged(parts: Iterable[Samples]) -> Samples:
    out: Samples = Counter()
    for part in parts:
        out.update(part)
    return out


def test_metrics_add_up_to_what_happened(system: System, database_url: str) -> None:
    faults = {"callbacks": {"duplicate": 0.3, "drop": 0.1}}
    set_up_world(system, N_LEADS, sim_config=faults)
    forged = httpx.post(
        f"{system.api_url}/v1/webhooks/simulator",
        content=b'{"event_id": "forged", "call_id": "x", "status": "completed"}',
        headers={SIGNATURE_HEADER: "sha256=" + "0" * 64, "Content-Type": "application/json"},
    )
    assert forged.status_code == 403
    wait_until(lambda: final_count(database_url) == N_LEADS, 120, what="all leads final")

    with psycopg.connect(database_url) as conn:
        outcomes = dict(
            conn.execute("SELECT outcome, count(*) FROM call_attempts GROUP BY 1").fetchall()
        )
        applied_rows = conn.execute("SELECT count(*) FROM webhook_events").fetchone()
    attempts = sum(outcomes.values())
    with system.sim() as sim:
        stats = sim.get("/sim/stats").json()
    assert attempts == stats["calls_total"] > N_LEADS  # retries happened
    assert stats["faults"]["duplicated"] > 0 and stats["faults"]["dropped"] > 0
    assert stats["callbacks_failed"] == 0

    targets = {
        "api": f"{system.api_url}/metrics",
        "scheduler": system.metrics_url("scheduler"),
        "worker-1": system.metrics_url("worker-1"),
        "worker-2": system.metrics_url("worker-2"),
    }
    scraped: dict[str, Samples] = {}

    def settled() -> bool:
        # Counters move just after the commits that ended the leads; gauges every second.
        scraped.update({name: scrape(url) for name, url in targets.items()})
        every = merged(scraped.values())
        ended = by_label(every, "switchboard_call_outcomes_total", "outcome")
        return (
            ended == {k: float(v) for k, v in outcomes.items()}
            and total(every, "switchboard_pickup_latency_seconds_count") == attempts
            # a sample taken after the last call ended
            and total(scraped["scheduler"], "switchboard_leads") == 0
            and total(scraped["scheduler"], "switchboard_calls_in_flight") == 0
        )

    # On a timeout the assertions below show what differs.
    with contextlib.suppress(TimeoutError):
        wait_until(settled, 20, what="metrics to match the database")
    every = merged(scraped.values())
    assert by_label(every, "switchboard_call_outcomes_total", "outcome") == {
        k: float(v) for k, v in outcomes.items()
    }
    sched, api = scraped["scheduler"], scraped["api"]
    workers = merged([scraped["worker-1"], scraped["worker-2"]])

    # Scheduler: claims, the backlog gauges, channels per number, reconciler repairs.
    assert total(sched, "switchboard_claims_total") >= attempts
    assert total(sched, "switchboard_due_leads") == 0
    assert total(sched, "switchboard_oldest_due_age_seconds") == 0
    assert by_label(sched, "switchboard_number_channels", "number") == {
        e164: float(channels) for e164, channels, _ in NUMBERS
    }
    assert set(by_label(sched, "switchboard_calls_in_flight", "number").values()) == {0.0}
    assert total(sched, "switchboard_scheduler_heartbeat_timestamp_seconds") > 0
    # Calls whose final callback the simulator dropped were ended by the reconciler.
    dropped = stats["faults"]["dropped"]
    assert total(sched, "switchboard_reconciler_repairs_total", kind="call_ended") == dropped
    assert total(sched, "switchboard_call_outcomes_total") == dropped

    # Workers: one pickup latency and one placing dispatch per attempt, and Dramatiq's own
    # count of the same messages.
    assert total(workers, "switchboard_pickup_latency_seconds_count") == attempts
    assert total(workers, "switchboard_pickup_latency_seconds_bucket", le="+Inf") == attempts
    assert total(workers, "switchboard_dispatches_total", result="placed") == attempts
    for name in ("worker-1", "worker-2"):  # each serves its processes' metrics
        assert ("switchboard_pickup_latency_seconds_count", ()) in scraped[name], name
    # Dispatches travel in batches: at least one message per `dispatch_batch` leads, and
    # never more messages than leads.
    dispatched = total(workers, "switchboard_dispatches_total")
    messages = total(workers, "dramatiq_messages_total", actor_name="dispatch_leads")
    assert dispatched / system.settings.dispatch_batch <= messages <= dispatched
    assert total(workers, "dramatiq_messages_total", actor_name="dispatch_lead") == 0
    assert total(workers, "dramatiq_message_errors_total") == 0

    # API: every delivered callback counted once, as applied or duplicate, and the forgery.
    applied = total(api, "switchboard_webhook_events_total", provider="simulator", result="applied")
    duplicate = total(
        api, "switchboard_webhook_events_total", provider="simulator", result="duplicate"
    )
    assert applied == (applied_rows[0] if applied_rows else -1)
    assert duplicate == stats["faults"]["duplicated"]
    assert applied + duplicate == stats["callbacks_sent"]
    assert total(api, "switchboard_webhook_events_total", result="bad_signature") == 1
    path = "/v1/webhooks/{provider}"  # grouped: no ids in labels
    assert (
        total(api, "litestar_requests_total", path=path, status_code="200") == applied + duplicate
    )
    assert total(api, "litestar_requests_total", path=path, status_code="403") == 1
    paths = {dict(ls)["path"] for (_, ls) in api if "path" in dict(ls)}
    assert "/v1/leads/bulk" in paths and not [p for p in paths if re.search(r"/\d", p)]
    assert total(every, "switchboard_call_outcomes_total") == attempts

    # With everything idle and every process beating, /health is 200 with all checks ok.
    health = httpx.get(f"{system.api_url}/health", timeout=5)
    assert health.status_code == 200, health.text
    body = health.json()
    assert set(body["checks"].values()) == {"ok"}
    assert body["details"]["workers_alive"] == 2
