"""Every setting Switchboard reads, in one place.

Each field has an environment variable and a default; the CLI's flags override the
environment by passing keyword arguments to `Settings.load`. No other module reads
`os.environ` for configuration.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _env(name: str) -> dict[str, Any]:
    return {"env": name}


@dataclass(frozen=True)
class Settings:
    database_url: str | None = field(default=None, metadata=_env("DATABASE_URL"))
    redis_url: str | None = field(default=None, metadata=_env("REDIS_URL"))
    jwt_secret: str = field(
        default="switchboard-dev-secret-change-me-0123456789",
        metadata=_env("SWITCHBOARD_JWT_SECRET"),
    )
    webhook_secret: str = field(
        default="switchboard-dev-webhook-secret", metadata=_env("SWITCHBOARD_WEBHOOK_SECRET")
    )
    data_dir: Path = field(default=Path(".switchboard"), metadata=_env("SWITCHBOARD_DATA_DIR"))
    api_host: str = field(default="127.0.0.1", metadata=_env("SWITCHBOARD_API_HOST"))
    api_port: int = field(default=8000, metadata=_env("SWITCHBOARD_API_PORT"))
    sim_host: str = field(default="127.0.0.1", metadata=_env("SWITCHBOARD_SIM_HOST"))
    sim_port: int = field(default=8001, metadata=_env("SWITCHBOARD_SIM_PORT"))
    # Where the simulator adapter sends place-call requests; defaults to sim_host:sim_port.
    sim_url: str | None = field(default=None, metadata=_env("SWITCHBOARD_SIM_URL"))
    # Base URL providers post status callbacks to; defaults to api_host:api_port.
    public_url: str | None = field(default=None, metadata=_env("SWITCHBOARD_PUBLIC_URL"))
    redis_prefix: str = field(default="sb", metadata=_env("SWITCHBOARD_REDIS_PREFIX"))
    # A claimed lead must reach DIALING within this many seconds or it returns to BACKLOG.
    lease_s: float = field(default=20.0, metadata=_env("SWITCHBOARD_LEASE_S"))
    # Longest call we expect; past it (plus grace) a call with no final status is reconciled.
    max_call_s: float = field(default=3600.0, metadata=_env("SWITCHBOARD_MAX_CALL_S"))
    call_grace_s: float = field(default=60.0, metadata=_env("SWITCHBOARD_CALL_GRACE_S"))
    # A lead that found no free channel at dispatch waits this long before the next claim.
    no_channel_delay_s: float = field(default=1.0, metadata=_env("SWITCHBOARD_NO_CHANNEL_DELAY_S"))
    reconcile_interval_s: float = field(
        default=2.0, metadata=_env("SWITCHBOARD_RECONCILE_INTERVAL_S")
    )
    # Longest the scheduler sleeps without a NOTIFY or a known due time.
    scheduler_safety_s: float = field(default=1.0, metadata=_env("SWITCHBOARD_SCHEDULER_SAFETY_S"))
    claim_batch: int = field(default=500, metadata=_env("SWITCHBOARD_CLAIM_BATCH"))
    # Most leads per dispatch message; a batch's calls are placed one after another, so
    # keep it small with a slow provider (each place-call waits for its answer).
    dispatch_batch: int = field(default=20, metadata=_env("SWITCHBOARD_DISPATCH_BATCH"))
    provider_timeout_s: float = field(default=10.0, metadata=_env("SWITCHBOARD_PROVIDER_TIMEOUT_S"))
    worker_processes: int = field(default=1, metadata=_env("SWITCHBOARD_WORKER_PROCESSES"))
    worker_threads: int = field(default=8, metadata=_env("SWITCHBOARD_WORKER_THREADS"))
    # Longest an idle worker waits before polling Redis again: bounds pickup latency.
    worker_poll_ms: int = field(default=10, metadata=_env("SWITCHBOARD_WORKER_POLL_MS"))
    db_pool_size: int = field(default=10, metadata=_env("SWITCHBOARD_DB_POOL_SIZE"))
    twilio_account_sid: str | None = field(default=None, metadata=_env("TWILIO_ACCOUNT_SID"))
    twilio_auth_token: str | None = field(default=None, metadata=_env("TWILIO_AUTH_TOKEN"))
    # --- operations: metrics, heartbeats, /health ---------------------------------------
    # Prometheus exposition of the scheduler and of each `switchboard worker` (all its
    # processes on one port); 0 turns it off. The API serves its own on GET /metrics.
    scheduler_metrics_port: int = field(
        default=9101, metadata=_env("SWITCHBOARD_SCHEDULER_METRICS_PORT")
    )
    worker_metrics_port: int = field(default=9191, metadata=_env("SWITCHBOARD_WORKER_METRICS_PORT"))
    metrics_host: str = field(default="127.0.0.1", metadata=_env("SWITCHBOARD_METRICS_HOST"))
    # How often the scheduler samples the backlog gauges (due leads, oldest due age, ...).
    metrics_sample_s: float = field(default=5.0, metadata=_env("SWITCHBOARD_METRICS_SAMPLE_S"))
    # How often each worker process writes its heartbeat (the scheduler writes every loop).
    worker_heartbeat_s: float = field(default=2.0, metadata=_env("SWITCHBOARD_WORKER_HEARTBEAT_S"))
    # /health fails when the newest scheduler (worker) heartbeat is older than this.
    heartbeat_stale_s: float = field(default=10.0, metadata=_env("SWITCHBOARD_HEARTBEAT_STALE_S"))
    health_min_workers: int = field(default=1, metadata=_env("SWITCHBOARD_HEALTH_MIN_WORKERS"))
    # /health warns when the oldest due lead waited longer than this, and fails past the
    # second (0: never fails on it); any pause in force downgrades the failure to a warning.
    health_due_warn_s: float = field(default=300.0, metadata=_env("SWITCHBOARD_HEALTH_DUE_WARN_S"))
    health_due_fail_s: float = field(default=3600.0, metadata=_env("SWITCHBOARD_HEALTH_DUE_FAIL_S"))
    # --- voice alerts ---------------------------------------------------------------------
    # Flood protection: at most this many alert calls per reseller, and per alert id, in
    # any `alert_window_s`; members over the cap are reported in the fire's `failed`.
    alert_calls_per_window: int = field(
        default=100, metadata=_env("SWITCHBOARD_ALERT_CALLS_PER_WINDOW")
    )
    alert_calls_per_alert: int = field(
        default=20, metadata=_env("SWITCHBOARD_ALERT_CALLS_PER_ALERT")
    )
    alert_window_s: float = field(default=60.0, metadata=_env("SWITCHBOARD_ALERT_WINDOW_S"))
    # --- health monitor (dispatcher/monitor.py) -------------------------------------------
    # How often the scheduler checks its own health (0: never); a condition alerts once
    # when it starts and reports when it recovers.
    monitor_interval_s: float = field(default=10.0, metadata=_env("SWITCHBOARD_MONITOR_INTERVAL_S"))
    # Conditions: more due leads than this; the oldest due lead waiting longer than this;
    # a call still open this long past max_call_s + call_grace_s (the reconciler ends lost
    # calls at that age, so only those it could not end count as stuck).
    monitor_due_backlog: int = field(default=200, metadata=_env("SWITCHBOARD_MONITOR_DUE_BACKLOG"))
    monitor_oldest_due_s: float = field(
        default=300.0, metadata=_env("SWITCHBOARD_MONITOR_OLDEST_DUE_S")
    )
    monitor_stuck_margin_s: float = field(
        default=60.0, metadata=_env("SWITCHBOARD_MONITOR_STUCK_MARGIN_S")
    )
    # The alert group a starting condition calls (both unset: no voice alert).
    monitor_reseller: str | None = field(
        default=None, metadata=_env("SWITCHBOARD_MONITOR_RESELLER")
    )
    monitor_group: str | None = field(default=None, metadata=_env("SWITCHBOARD_MONITOR_GROUP"))
    # Slack-compatible JSON POSTed on every start and recovery (unset: off).
    monitor_webhook_url: str | None = field(
        default=None, metadata=_env("SWITCHBOARD_MONITOR_WEBHOOK_URL")
    )
    monitor_webhook_timeout_s: float = field(
        default=3.0, metadata=_env("SWITCHBOARD_MONITOR_WEBHOOK_TIMEOUT_S")
    )
    # Benchmarks only: numbers with provider "instant" end every call at once, completed.
    instant_provider: bool = field(default=False, metadata=_env("SWITCHBOARD_INSTANT_PROVIDER"))
    # --- shadow ZSET schedule (dispatcher/shadow.py; on/off lives in the shadow_flags table) --
    # Prefix of the shadow's Redis keys; the rest are the seed's names (schedule:leads, ...).
    shadow_prefix: str = field(default="shadow:", metadata=_env("SWITCHBOARD_SHADOW_PREFIX"))
    shadow_shards: int = field(default=4, metadata=_env("SWITCHBOARD_SHADOW_SHARDS"))
    shadow_consumers: int = field(default=4, metadata=_env("SWITCHBOARD_SHADOW_CONSUMERS"))
    shadow_promoter_tick_s: float = field(
        default=0.2, metadata=_env("SWITCHBOARD_SHADOW_PROMOTER_TICK_S")
    )
    shadow_lock_ttl_s: float = field(default=5.0, metadata=_env("SWITCHBOARD_SHADOW_LOCK_TTL_S"))
    shadow_lock_renew_s: float = field(
        default=2.0, metadata=_env("SWITCHBOARD_SHADOW_LOCK_RENEW_S")
    )
    shadow_backlog_reconcile_s: float = field(
        default=60.0, metadata=_env("SWITCHBOARD_SHADOW_BACKLOG_RECONCILE_S")
    )
    shadow_reap_s: float = field(default=30.0, metadata=_env("SWITCHBOARD_SHADOW_REAP_S"))
    # A processing-list entry held this long is stuck (its consumer died): re-scheduled.
    shadow_stuck_s: float = field(default=300.0, metadata=_env("SWITCHBOARD_SHADOW_STUCK_S"))
    shadow_retention_days: int = field(
        default=7, metadata=_env("SWITCHBOARD_SHADOW_RETENTION_DAYS")
    )
    # How stale a process's copy of shadow_flags may be: a switch takes effect within it.
    shadow_flag_refresh_s: float = field(
        default=1.0, metadata=_env("SWITCHBOARD_SHADOW_FLAG_REFRESH_S")
    )
    log_level: str = field(default="INFO", metadata=_env("SWITCHBOARD_LOG_LEVEL"))
    log_json: bool = field(default=True, metadata=_env("SWITCHBOARD_LOG_JSON"))

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `env` (default: the process environment), then `overrides`."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _coerce(f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.metadata["env"]] = (
                    str(value).lower() if isinstance(value, bool) else str(value)
                )
        return out

    @property
    def simulator_url(self) -> str:
        return self.sim_url or f"http://{self.sim_host}:{self.sim_port}"

    @property
    def callback_base_url(self) -> str:
        return self.public_url or f"http://{self.api_host}:{self.api_port}"


def _coerce(type_name: Any, raw: str) -> Any:
    name = str(type_name)
    if name.startswith("bool"):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if name.startswith("int"):
        return int(raw)
    if name.startswith("float"):
        return float(raw)
    if name.startswith("Path"):
        return Path(raw)
    return raw
