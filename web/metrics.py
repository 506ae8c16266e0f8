"""`GET /metrics`: the API's Prometheus metrics, Litestar's request metrics and ours.

Paths are grouped by route template (`/v1/leads/{lead_id}`, not `/v1/leads/42`), so a
lead id never becomes a label value. Unmatched paths (404 without a route) and requests
the JWT middleware refuses (401) never reach this middleware, so they are not counted:
placed outside the auth middleware it would see the 401 as an exception and record a 200.
"""

from __future__ import annotations

from litestar.plugins.prometheus import PrometheusConfig, PrometheusController

# Litestar names its series `{PREFIX}_requests_total`, `_request_duration_seconds`,
# `_requests_in_progress` and `_requests_error_total` (ops/METRICS.md).
PREFIX = "litestar"
APP_NAME = "switchboard"


def prometheus_config() -> PrometheusConfig:
    return PrometheusConfig(
        app_name=APP_NAME,
        prefix=PREFIX,
        group_path=True,
        exclude=["^/metrics$"],  # scrapes are not traffic
    )


class MetricsController(PrometheusController):
    """Prometheus text format on /metrics (public, like /health: see web.auth)."""

    path = "/metrics"
    tags = ["operations"]
