"""The one settings module: environment parsing, flag overrides, and the child-process env.

`switchboard up` hands `Settings.to_env()` to the processes it starts, so a setting that
does not survive the round trip would silently differ between parent and children.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.settings import Settings

FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def env_name(field: str) -> str:
    return FIELDS[field].metadata["env"]


def test_no_environment_gives_the_defaults() -> None:
    settings = Settings.load({})

    assert settings == Settings()
    assert settings.database_url is None
    assert settings.api_port == 8000
    assert settings.sim_port == 8001
    assert settings.log_json is True


def test_every_field_has_its_own_environment_variable() -> None:
    names = [f.metadata.get("env") for f in FIELDS.values()]

    assert all(names), "a field without an env var cannot be set outside the CLI"
    assert len(set(names)) == len(names)


def test_the_documented_variable_names() -> None:
    # Clients and compose files are written against these names (API.md).
    assert env_name("database_url") == "DATABASE_URL"
    assert env_name("redis_url") == "REDIS_URL"
    assert env_name("jwt_secret") == "SWITCHBOARD_JWT_SECRET"
    assert env_name("api_port") == "SWITCHBOARD_API_PORT"
    assert env_name("sim_port") == "SWITCHBOARD_SIM_PORT"
    assert env_name("webhook_secret") == "SWITCHBOARD_WEBHOOK_SECRET"
    assert env_name("data_dir") == "SWITCHBOARD_DATA_DIR"


def test_strings_are_taken_verbatim() -> None:
    url = "postgresql://u:p@db:5432/sb?sslmode=require"

    settings = Settings.load({"DATABASE_URL": url, "SWITCHBOARD_JWT_SECRET": " spaced "})

    assert settings.database_url == url
    assert settings.jwt_secret == " spaced "


def test_ints_are_parsed() -> None:
    settings = Settings.load({"SWITCHBOARD_API_PORT": "9000", "SWITCHBOARD_CLAIM_BATCH": "25"})

    assert settings.api_port == 9000
    assert isinstance(settings.api_port, int)
    assert settings.claim_batch == 25


def test_floats_are_parsed() -> None:
    settings = Settings.load({"SWITCHBOARD_LEASE_S": "2.5", "SWITCHBOARD_MAX_CALL_S": "90"})

    assert settings.lease_s == 2.5
    assert settings.max_call_s == 90.0
    assert isinstance(settings.max_call_s, float)


def test_paths_are_parsed() -> None:
    settings = Settings.load({"SWITCHBOARD_DATA_DIR": "/var/lib/switchboard"})

    assert settings.data_dir == Path("/var/lib/switchboard")
    assert isinstance(settings.data_dir, Path)


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "True", "yes", "on", " on "])
def test_truthy_bools(raw: str) -> None:
    assert Settings.load({"SWITCHBOARD_LOG_JSON": raw}).log_json is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "no", "off"])
def test_falsy_bools(raw: str) -> None:
    assert Settings.load({"SWITCHBOARD_LOG_JSON": raw}).log_json is False


@pytest.mark.parametrize(
    ("var", "raw"),
    [("SWITCHBOARD_API_PORT", "eighty"), ("SWITCHBOARD_LEASE_S", "30s")],
)
def test_a_malformed_number_is_an_error_not_a_silent_default(var: str, raw: str) -> None:
    with pytest.raises(ValueError):
        Settings.load({var: raw})


def test_blank_values_are_ignored() -> None:
    # compose files and shells leave `VAR=` behind; that must mean "use the default".
    blank = ""
    env = {
        "DATABASE_URL": blank,
        "SWITCHBOARD_API_PORT": blank,
        "SWITCHBOARD_LEASE_S": blank,
        "SWITCHBOARD_LOG_JSON": blank,
        "SWITCHBOARD_DATA_DIR": blank,
        "SWITCHBOARD_JWT_SECRET": blank,
    }

    assert Settings.load(env) == Settings()


def test_unrelated_variables_are_ignored() -> None:
    assert Settings.load({"PATH": "/usr/bin", "SWITCHBOARD_NOPE": "1"}) == Settings()


def test_overrides_beat_the_environment() -> None:
    env = {"SWITCHBOARD_API_PORT": "9000", "REDIS_URL": "redis://env:6379/0"}

    settings = Settings.load(env, api_port=9100, redis_url="redis://flag:6379/1")

    assert settings.api_port == 9100
    assert settings.redis_url == "redis://flag:6379/1"


def test_an_override_of_none_leaves_the_environment_value() -> None:
    # The CLI passes every flag; one the user did not give arrives as None.
    settings = Settings.load({"SWITCHBOARD_API_PORT": "9000"}, api_port=None, sim_port=None)

    assert settings.api_port == 9000
    assert settings.sim_port == 8001


def test_an_unknown_override_is_an_error() -> None:
    with pytest.raises(TypeError):
        Settings.load({}, api_prot=9000)


def test_without_an_env_mapping_the_process_environment_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SWITCHBOARD_SIM_PORT", "8123")
    monkeypatch.delenv("SWITCHBOARD_API_PORT", raising=False)

    settings = Settings.load()

    assert settings.sim_port == 8123
    assert settings.api_port == 8000


def test_to_env_round_trips_the_defaults() -> None:
    assert Settings.load(Settings().to_env()) == Settings()


def test_to_env_round_trips_every_changed_field() -> None:
    changed = Settings(
        database_url="postgresql://a@b/c",
        redis_url="redis://r:1/2",
        jwt_secret="j" * 40,
        webhook_secret="w",
        data_dir=Path("/tmp/sb data"),
        api_host="0.0.0.0",
        api_port=1,
        sim_host="::1",
        sim_port=2,
        sim_url="http://sim:8001",
        public_url="https://sb.example.com",
        redis_prefix="p",
        lease_s=0.25,
        max_call_s=1e6,
        call_grace_s=0.0,
        no_channel_delay_s=3.5,
        reconcile_interval_s=0.1,
        scheduler_safety_s=7.0,
        claim_batch=3,
        dispatch_batch=7,
        provider_timeout_s=1.5,
        worker_processes=4,
        worker_threads=16,
        worker_poll_ms=25,
        db_pool_size=2,
        twilio_account_sid="AC123",
        twilio_auth_token="tok",
        scheduler_metrics_port=9,
        worker_metrics_port=0,
        metrics_host="0.0.0.0",
        metrics_sample_s=0.5,
        worker_heartbeat_s=0.2,
        heartbeat_stale_s=3.0,
        health_min_workers=2,
        health_due_warn_s=60.0,
        health_due_fail_s=0.0,
        alert_calls_per_window=7,
        alert_calls_per_alert=3,
        alert_window_s=30.0,
        monitor_interval_s=0.0,
        monitor_due_backlog=5,
        monitor_oldest_due_s=12.5,
        monitor_stuck_margin_s=0.0,
        monitor_reseller="ops",
        monitor_group="sre",
        monitor_webhook_url="https://hooks.example.com/x",
        monitor_webhook_timeout_s=1.0,
        instant_provider=True,
        shadow_prefix="sh:",
        shadow_shards=8,
        shadow_consumers=2,
        shadow_promoter_tick_s=0.05,
        shadow_lock_ttl_s=3.0,
        shadow_lock_renew_s=1.0,
        shadow_backlog_reconcile_s=5.0,
        shadow_reap_s=2.0,
        shadow_stuck_s=10.0,
        shadow_retention_days=1,
        shadow_flag_refresh_s=0.5,
        log_level="DEBUG",
        log_json=False,
    )
    unchanged = [f for f in FIELDS if getattr(changed, f) == getattr(Settings(), f)]
    assert unchanged == [], "this test must change every field to cover its type"

    assert Settings.load(changed.to_env()) == changed


def test_to_env_writes_bools_the_parser_reads_and_omits_unset_values() -> None:
    env = Settings(log_json=False).to_env()

    assert env["SWITCHBOARD_LOG_JSON"] == "false"
    assert "DATABASE_URL" not in env
    assert "TWILIO_AUTH_TOKEN" not in env
    assert all(isinstance(v, str) for v in env.values())


@given(
    api_port=st.integers(min_value=1, max_value=65535),
    lease_s=st.floats(min_value=0, max_value=1e9, allow_nan=False),
    log_json=st.booleans(),
    secret=st.text(
        st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=1
    ).filter(str.strip),
)
def test_to_env_round_trips_any_values(
    api_port: int, lease_s: float, log_json: bool, secret: str
) -> None:
    settings = Settings(api_port=api_port, lease_s=lease_s, log_json=log_json, jwt_secret=secret)

    assert Settings.load(settings.to_env()) == settings


def test_derived_urls_default_to_host_and_port() -> None:
    settings = Settings.load({"SWITCHBOARD_API_PORT": "9000", "SWITCHBOARD_SIM_HOST": "sim"})

    assert settings.callback_base_url == "http://127.0.0.1:9000"
    assert settings.simulator_url == "http://sim:8001"


def test_explicit_urls_beat_the_derived_ones() -> None:
    settings = Settings.load(
        {
            "SWITCHBOARD_PUBLIC_URL": "https://sb.example.com",
            "SWITCHBOARD_SIM_URL": "http://simulator:8001",
        }
    )

    assert settings.callback_base_url == "https://sb.example.com"
    assert settings.simulator_url == "http://simulator:8001"


def test_settings_are_immutable() -> None:
    settings = Settings()

    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.api_port = 1  # type: ignore[misc]
