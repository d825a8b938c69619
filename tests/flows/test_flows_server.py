"""`tessera flows up`: a real Prefect server + worker, prefect.yaml deployed with its cron schedule."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tessera(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_flows_up_registers_the_cron_deployment_and_a_triggered_run_completes(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TESSERA_", "MLFLOW_"))}
    env.update({"TESSERA_WORKSPACE": str(tmp_path / "ws"), "PYTHONPATH": str(ROOT)})
    api = f"http://127.0.0.1:{port}/api"
    try:
        up = _tessera(["flows", "up", "--port", str(port)], env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert (tmp_path / "ws" / "prefect" / "prefect.db").is_file()  # SQLite in the workspace
        deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
        by_name = {d["name"]: d for d in deployments}
        assert {"retrain-weekly", "health"} <= set(by_name)
        schedules = by_name["retrain-weekly"]["schedules"]
        assert [s["schedule"]["cron"] for s in schedules] == ["0 3 * * 1"]
        assert by_name["retrain-weekly"]["work_pool_name"] == "tessera-process"
        run = httpx.post(
            f"{api}/deployments/{by_name['health']['id']}/create_flow_run", json={}, timeout=30
        ).json()
        state = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            state = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=30).json()["state"]["type"]
            if state in ("COMPLETED", "FAILED", "CRASHED"):
                break
            time.sleep(1)
        log = tmp_path / "ws" / "prefect" / "worker.log"
        assert state == "COMPLETED", log.read_text()[-3000:] if log.exists() else state
    finally:
        down = _tessera(["flows", "down"], env, timeout=120)
        assert "server" in down.stdout, down.stdout + down.stderr
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/health", timeout=2)
