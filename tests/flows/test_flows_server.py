"""`tessera flows up`: a real Prefect server + worker, prefect.yaml deployed with its cron schedule;
`prefect deploy --all` (what `up` runs) against a real server, alone and through `deploy_all`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

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


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TESSERA_", "MLFLOW_"))}
    env.update({"TESSERA_WORKSPACE": str(tmp_path / "ws"), "PYTHONPATH": str(ROOT)})
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    return env


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[str]:
    """`prefect server start` (SQLite in a temporary PREFECT_HOME, no UI) on a free port; its API URL."""
    env = {**_clean_env(tmp_path), "PREFECT_SERVER_UI_ENABLED": "false"}
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    server_log = tmp_path / "server.log"
    log = server_log.open("wb")
    prefect = str(Path(sys.executable).with_name("prefect"))
    server = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server_log.read_text()[-3000:]
            time.sleep(0.5)
        yield api
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


def _deployments(api: str) -> dict[str, dict[str, Any]]:
    """The server's deployments by ``flow/deployment`` name."""
    rows = httpx.post(f"{api}/deployments/filter", json={"limit": 200}, timeout=30).json()
    flows = httpx.post(f"{api}/flows/filter", json={"limit": 200}, timeout=30).json()
    flow_names = {f["id"]: f["name"] for f in flows}
    return {f"{flow_names[d['flow_id']]}/{d['name']}": d for d in rows}


def test_prefect_deploy_all_registers_prefect_yaml(prefect_server: str, tmp_path: Path) -> None:
    """`prefect --no-prompt deploy --all` from the project root (the pinned Prefect and FastAPI: no
    422), then `flows.server.deploy_all` again (an update; it returns the names), then a bad spec."""
    api = prefect_server
    env = {**_clean_env(tmp_path), "PREFECT_API_URL": api, "TESSERA_ROOT": str(ROOT)}
    prefect = str(Path(sys.executable).with_name("prefect"))

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    pool = run([prefect, "work-pool", "create", "tessera-process", "--type", "process"])
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = run([prefect, "--no-prompt", "deploy", "--all"])
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    found = _deployments(api)
    assert {d["name"] for d in found.values()} == {d["name"] for d in spec["deployments"]}
    assert {"retrain/retrain-weekly", "health/health"} <= set(found)
    retrain = found["retrain/retrain-weekly"]
    assert retrain["entrypoint"] == "flows/retrain.py:retrain"
    assert retrain["work_pool_name"] == "tessera-process"
    assert [s["schedule"]["cron"] for s in retrain["schedules"]] == ["0 3 * * 1"]
    assert retrain["parameters"] == {"params_path": "params.yaml", "force": False, "deploy": True}
    assert "params_path" in retrain["parameter_openapi_schema"]["properties"]
    assert retrain["global_concurrency_limit"]["limit"] == 1
    pull = retrain["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]
    assert pull["directory"] == str(ROOT)  # {{ $TESSERA_ROOT }}, resolved when deployed
    listed = run([prefect, "deployment", "ls"])
    assert listed.returncode == 0 and "retrain-weekly" in listed.stdout, listed.stdout + listed.stderr

    script = (
        "import json, sys; from pathlib import Path; from flows import server; "
        "spec = Path(sys.argv[2]) if len(sys.argv) > 2 else server.ROOT / 'prefect.yaml'\n"
        "try:\n    print(json.dumps(server.deploy_all(sys.argv[1], spec)))\n"
        "except RuntimeError as e:\n    print(e); sys.exit(3)"
    )
    again = run([sys.executable, "-c", script, api])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    names = json.loads(again.stdout.strip().splitlines()[-1])
    assert names == [next(k for k in found if k.endswith(f"/{d['name']}")) for d in spec["deployments"]]
    assert {d["id"] for d in _deployments(api).values()} == {d["id"] for d in found.values()}  # updated

    bad = tmp_path / "prefect.yaml"
    bad.write_text(
        yaml.safe_dump(
            {**spec, "deployments": [{"name": "nowhere", "entrypoint": "flows/nowhere.py:nowhere"}]}
        )
    )
    failed = run([sys.executable, "-c", script, api, str(bad)])
    assert failed.returncode == 3, failed.stdout + failed.stderr
    assert f"registering the deployments of {bad} failed" in failed.stdout
    assert "deploy --all" in failed.stdout and "exit code" in failed.stdout
