"""The operations files against the code: the Grafana dashboard and the alert rules may
only query metrics that some process defines, the rules pass promtool and their own unit
tests, every alert has a runbook, METRICS.md documents exactly the metrics there are, and
the compose profile mounts files that exist.

Metric names come from the code, not from a list kept here: prometheus_client's registry
after importing `dispatcher.metrics` (and creating the scheduler's gauges), Litestar's
Prometheus middleware, and Dramatiq's Prometheus middleware after its process boot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from litestar.plugins.prometheus import PrometheusMiddleware
from prometheus_client import REGISTRY, Metric
from prometheus_client.metrics import MetricWrapperBase

from dispatcher import metrics
from web.metrics import APP_NAME, prometheus_config

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
DASHBOARD = OPS / "grafana" / "switchboard.json"
ALERTS = OPS / "prometheus" / "alerts.yml"
ALERT_TESTS = OPS / "prometheus" / "alerts.test.yml"
PROMETHEUS_CONFIG = OPS / "prometheus" / "prometheus.yml"
# Series Prometheus itself adds to every scrape target.
SCRAPE_SERIES = {"up"}
# Grafana's interval variables, replaced by a duration before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def _series(family: str, kind: str) -> set[str]:
    return {family + suffix for suffix in SUFFIXES.get(kind, ("",))}


def _families(wrappers: Iterator[MetricWrapperBase]) -> set[str]:
    names: set[str] = set()
    for wrapper in wrappers:
        for family in wrapper.describe():
            names |= _series(family.name, family.type)
    return names


def _litestar_series() -> set[str]:
    """Litestar creates its metrics on first use: create them the way a request does."""
    middleware = PrometheusMiddleware(app=None, config=prometheus_config())  # type: ignore[arg-type]
    labels: dict[str, str | int | float] = {
        "method": "GET",
        "path": "/",
        "status_code": 200,
        "app_name": APP_NAME,
    }
    created = (
        middleware.request_count(labels),
        middleware.request_time(labels),
        middleware.requests_in_progress(labels),
        middleware.requests_error_count(labels),
    )
    return _families(iter(created))


def _dramatiq_series(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> set[str]:
    """Dramatiq's middleware creates its metrics at process boot, in a registry of its own;
    the boot also sets the multiprocess variables, which monkeypatch puts back."""
    from dramatiq.middleware.prometheus import Prometheus

    for var in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        monkeypatch.setenv(var, str(tmp_path))
    middleware = Prometheus()
    middleware.after_process_boot(None)  # type: ignore[arg-type]
    wrappers = (v for v in vars(middleware).values() if isinstance(v, MetricWrapperBase))
    return _families(wrappers)


def _registry_series() -> set[str]:
    metrics.scheduler_gauges()  # created on the scheduler's first sample
    names: set[str] = set()
    family: Metric
    for family in REGISTRY.collect():
        names |= _series(family.name, family.type)
    return names


@pytest.fixture(scope="module")
def defined() -> Iterator[set[str]]:
    """Every series name a Switchboard process can expose, plus Prometheus's own."""
    with pytest.MonkeyPatch.context() as mp:
        tmp = Path(tempfile.mkdtemp(prefix="sb-prom-"))
        try:
            yield (
                _registry_series() | _litestar_series() | _dramatiq_series(mp, tmp) | SCRAPE_SERIES
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def selectors(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana variables allowed)."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def unknown(exprs: list[str], defined: set[str]) -> dict[str, set[str]]:
    bad = {expr: selectors(expr) - defined for expr in exprs}
    return {expr: names for expr, names in bad.items() if names}


# --- the checker itself ------------------------------------------------------------------


def test_a_misspelled_metric_is_caught(defined: set[str]) -> None:
    good = "sum(rate(switchboard_claims_total[$__rate_interval]))"
    typo = "sum(rate(switchboard_claim_total[$__rate_interval]))"
    assert unknown([good], defined) == {}
    assert unknown([typo], defined) == {typo: {"switchboard_claim_total"}}


def test_the_defined_names_come_from_every_source(defined: set[str]) -> None:
    assert {
        "switchboard_claims_total",
        "switchboard_pickup_latency_seconds_bucket",
        "switchboard_due_leads",
        "litestar_requests_total",
        "dramatiq_messages_total",
    } <= defined


# --- the dashboard -----------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _targets(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_the_dashboard_queries_only_defined_metrics(defined: set[str]) -> None:
    dashboard = _dashboard()
    targets = _targets(dashboard)
    assert len(targets) >= 15
    assert unknown([expr for _, expr in targets], defined) == {}


def test_the_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "switchboard"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)) and refs, panel["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"


def test_the_dashboard_shows_what_operators_ask_first() -> None:
    by_title: dict[str, list[str]] = {}
    for title, expr in _targets(_dashboard()):
        by_title.setdefault(title, []).append(expr)
    latency = by_title["Pickup latency (due → call started)"]
    quantiles = [re.match(r"histogram_quantile\((0\.\d+),", e) for e in latency]
    assert [q.group(1) for q in quantiles if q] == ["0.50", "0.95", "0.99"]
    assert all("switchboard_pickup_latency_seconds_bucket" in e for e in latency)
    wanted = {
        "Queue depth": "switchboard_leads",
        "Calls / s": "switchboard_dispatches_total",
        "Call outcomes / s": "switchboard_call_outcomes_total",
        "Channel use per number": "switchboard_calls_in_flight",
    }
    for title, metric in wanted.items():
        assert any(metric in e for e in by_title[title]), title


# --- the alert rules ---------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: it checks ops/prometheus. Install it with"
            " `apt-get install -y prometheus` (Debian's package ships /usr/bin/promtool)."
        )
    return path


def _run_promtool(*args: str) -> str:
    done = subprocess.run(
        [_promtool(), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_accepts_the_rules() -> None:
    out = _run_promtool("check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(_rules())} rules found" in out


def test_the_rules_pass_their_unit_tests() -> None:
    out = _run_promtool("test", "rules", str(ALERT_TESTS))
    assert "SUCCESS" in out
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    }
    assert tested == {rule["alert"] for rule in _rules()}, "every alert has a unit test"


def test_promtool_accepts_the_scrape_config() -> None:
    _run_promtool("check", "config", str(PROMETHEUS_CONFIG))


def test_the_rules_query_only_defined_metrics(defined: set[str]) -> None:
    assert unknown([rule["expr"] for rule in _rules()], defined) == {}


def test_the_brief_s_alerts_exist() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in _rules()}
    assert "max(switchboard_due_leads) > 200" in exprs["SwitchboardDueBacklogHigh"]
    assert "> 300" in exprs["SwitchboardOldestDueLeadLate"]
    assert "[1h]" in exprs["SwitchboardDispatchStalled"]
    assert "switchboard_scheduler_heartbeat" in exprs["SwitchboardSchedulerDown"]
    assert "/v1/webhooks/{provider}" in exprs["SwitchboardWebhookErrors"]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


def test_every_alert_has_a_runbook() -> None:
    anchors = _anchors((OPS / "RUNBOOKS.md").read_text())
    for rule in _rules():
        link = rule["annotations"]["runbook"]
        path, anchor = link.split("#")
        assert path == "ops/RUNBOOKS.md"
        assert anchor == rule["alert"].lower() and anchor in anchors, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")


# --- METRICS.md ---------------------------------------------------------------------------


def test_metrics_md_documents_exactly_the_metrics_there_are(defined: set[str]) -> None:
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", (OPS / "METRICS.md").read_text(), re.M))
    ours = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in REGISTRY.collect()
        if family.name.startswith("switchboard_")
    }
    assert ours <= documented, "undocumented: " + ", ".join(sorted(ours - documented))
    stale = {name for name in documented if not (name in defined or f"{name}_bucket" in defined)}
    assert stale == set(), "documented but not defined"


# --- compose and supervisord -------------------------------------------------------------


def test_the_observability_profile_mounts_files_that_exist() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"], name
        for volume in services[name]["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), volume
    for name in ("api", "scheduler", "worker", "simulator", "postgres", "redis"):
        assert "profiles" not in services[name], f"{name} must run without the profile"
    assert compose["x-switchboard-env"]["SWITCHBOARD_METRICS_HOST"] == "0.0.0.0"


def test_supervisord_runs_every_process_kind() -> None:
    conf = (OPS / "supervisord.conf").read_text()
    programs = set(re.findall(r"^\[program:(\w+)\]", conf, flags=re.M))
    assert programs == {"api", "scheduler", "worker", "simulator"}
    commands = re.findall(r"^command=.*switchboard (\w+)$", conf, flags=re.M)
    assert sorted(commands) == sorted(programs)
    assert len(re.findall(r"^autorestart=true$", conf, flags=re.M)) == len(programs)


# --- the worker's multiprocess metrics ----------------------------------------------------


def test_the_worker_command_does_not_import_prometheus_client_before_forking() -> None:
    """prometheus_client picks its multiprocess mode when first imported; `switchboard
    worker` sets the directory and then forks, so importing it earlier (from the CLI's
    imports) would silently leave the workers' own metrics out of /metrics."""
    code = "import sys, dispatcher.cli; print('prometheus_client' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.strip() == "False"
