"""`switchboard up` as the README runs it: embedded PostgreSQL and Valkey, every process,
a lead posted with the printed token gets dialed, Ctrl-C stops it all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.e2e.harness import free_port, wait_until


def test_up_runs_everything_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    api_port, sim_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "SWITCHBOARD_JWT_SECRET")
    }
    env.update(SWITCHBOARD_LOG_JSON="true")
    data_dir = tmp_path / "data"
    out = (tmp_path / "up.out").open("w+")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dispatcher.cli",
            "up",
            "--data-dir",
            str(data_dir),
            "--api-port",
            str(api_port),
            "--sim-port",
            str(sim_port),
        ],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: "Press Ctrl-C" in Path(out.name).read_text(), 120, what="the banner")
        banner = Path(out.name).read_text()
        assert f"http://127.0.0.1:{api_port}/schema" in banner
        assert f"http://127.0.0.1:{sim_port}" in banner
        token = banner.split("admin token (30 days):", 1)[1].split()[0]
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        template = {
            "calling_window": None,
            "retry": {"max_attempts": 1, "retry_on": [], "delay_s": 0, "backoff": "fixed"},
            "frequency_cap": None,
            "execution_mode": "telephony",
        }
        api.put("/v1/templates/anytime", json=template).raise_for_status()
        lead = api.post(
            "/v1/leads",
            json={"phone": "+14155550123", "reseller_id": "acme", "template": "anytime"},
        )
        assert lead.status_code == 201, lead.text
        lead_id = lead.json()["id"]

        def finished() -> bool:
            return api.get(f"/v1/leads/{lead_id}").json()["status"] in ("COMPLETED", "FAILED")

        wait_until(finished, 60, what="the lead's call")
        body = api.get(f"/v1/leads/{lead_id}").json()
        assert body["attempt_count"] == 1 and body["attempts"][0]["number"] == "+15005550006"
        assert httpx.get(f"http://127.0.0.1:{sim_port}/sim/stats").json()["calls_total"] == 1
        api.close()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
        out.close()
    assert code == 0, Path(out.name).read_text()[-2000:]
    assert "stopped" in Path(out.name).read_text()
    # The embedded servers are gone with it, and their data stays for the next run.
    time.sleep(0.5)
    assert not any(data_dir.glob("postgres/pgdata/postmaster.pid"))
    assert (data_dir / "postgres" / "pgdata" / "PG_VERSION").exists()
