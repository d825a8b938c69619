"""Crashes leave no stale state: a killed flow's runs are marked by the next one, deterministic errors
are not retried, a resumed step says so, a temporary Prefect server goes with its process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifecycle import tracking

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _flow_runs_tagged(tag: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:  # sort, limit: FastAPI 0.151+ gives 422 on nulls
        found = FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
        return client.read_flow_runs(flow_run_filter=found, sort=FlowRunSort.ID_DESC, limit=10)


def test_killed_retrain_is_marked_crashed_by_the_next_one(
    prefect_harness: str, tiny_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.retrain import FAULT_ENV, retrain

    monkeypatch.setenv("TESSERA_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.delenv("TESSERA_MLFLOW_URI", raising=False)
    env = {**os.environ, FAULT_ENV: "pretrain", "PREFECT_API_URL": prefect_harness, "PYTHONPATH": str(ROOT)}
    code = f"from flows.retrain import retrain; retrain(root={str(tiny_project)!r}, deploy=False)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 137, err[-3000:]
    dead = str(proc.pid)

    client = tracking.client()
    exp = tracking.experiment_id(client)
    left = client.search_runs([exp], "attributes.status = 'RUNNING'")
    assert [r.data.tags["mlflow.runName"] for r in left] == ["retrain"]  # the parent; pretrain finished
    parent = left[0]
    assert parent.data.tags[tracking.PID_TAG] == dead
    assert parent.data.tags[tracking.HOST_TAG] == socket.gethostname()
    step = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")[0]
    assert step.data.tags[tracking.PID_TAG] == dead  # the step runs are owned too
    (flow_run,) = _flow_runs_tagged(f"tessera.pid:{dead}")
    assert flow_run.state.type.value == "RUNNING"

    summary = retrain(root=str(tiny_project), deploy=False)

    failed = client.get_run(parent.info.run_id)
    assert failed.info.status == "FAILED"
    reason = failed.data.tags[tracking.CRASH_TAG]
    assert f"process {dead} " in reason and "gone" in reason
    (flow_run,) = _flow_runs_tagged(f"tessera.pid:{dead}")
    assert flow_run.state.type.value == "CRASHED"
    assert f"process {dead} " in flow_run.state.message
    assert client.get_run(summary["mlflow_run_id"]).info.status == "FINISHED"  # the live one is not touched
    assert summary["steps"]["pretrain"]["cached"] is True


def test_data_error_in_check_data_fails_at_once(
    prefect_harness: str, tiny_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    from flows.retrain import retrain
    from tessera.errors import DataError

    monkeypatch.setenv("TESSERA_WORKSPACE", str(tmp_path / "ws"))
    project = Path(shutil.copytree(tiny_project, tmp_path / "p"))
    victim = project / "data" / "tiny" / "train" / "a" / "0.png"
    victim.write_bytes(victim.read_bytes()[:-10])
    state = retrain(root=str(project), deploy=False, return_state=True)
    with pytest.raises(DataError, match="0.png"):
        state.result()
    with get_client(sync_client=True) as client:
        ids = FlowRunFilterId(any_=[state.state_details.flow_run_id])
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=ids), sort=TaskRunSort.ID_DESC, limit=50
        )
    (check,) = [t for t in task_runs if t.task_key.startswith("check_data")]
    assert check.run_count == 1 and check.state.type.value == "FAILED"  # no retries of a DataError


def test_only_io_errors_are_retried(prefect_harness: str) -> None:
    from prefect import task

    from flows.tasks import is_io_error, retry_on_io
    from tessera.errors import ConfigError, DataError

    def chained(outer: BaseException, cause: BaseException) -> BaseException:
        outer.__cause__ = cause
        return outer

    assert is_io_error(ConnectionError("reset")) and is_io_error(TimeoutError())
    assert is_io_error(chained(RuntimeError("upload"), OSError("disk")))
    assert not is_io_error(DataError("changed")) and not is_io_error(ValueError("bad"))
    assert not is_io_error(chained(DataError("dvc pull failed"), OSError("net")))  # ours decides
    calls: list[str] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_on_io)
    def flaky(kind: str) -> str:
        calls.append(kind)
        if kind == "config":
            raise ConfigError("pretrain.epochs must be >= 1")
        if len(calls) < 3:
            raise ConnectionError("MLflow went away")
        return "ok"

    assert flaky("io") == "ok" and calls == ["io"] * 3  # two retries, then success
    calls.clear()
    with pytest.raises(ConfigError):
        flaky("config")
    assert calls == ["config"]


def test_resumed_pretraining_says_so(
    tiny_project: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from components import pretrain
    from tessera.config import load_params, section_of

    cfg = section_of(pretrain.Config, load_params(tiny_project / "params.yaml"), "pretrain")
    data, out = tiny_project / "data" / "tiny", tmp_path / "out"
    pretrain.run(cfg, data, out, data_version="d" * 32, progress=False)
    assert "resumed" not in capsys.readouterr().out
    pretrain.run(cfg, data, out, data_version="d" * 32, progress=False)  # the rerun after a "crash"
    assert f"pretrain: resumed from epoch 1 of 1 ({out / 'encoder.pt'}" in capsys.readouterr().out


# --- a temporary Prefect server goes with the process that started it ------------------------------


def _group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def _gone(pgid: int, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while _group(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _group(pgid)


def _start_owner(ws: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], dict]:
    """A process that starts a temporary server and sleeps; returns it and the server's record."""
    code = (
        "from flows import server; import time\nprint(server.temporary_server(), flush=True)\ntime.sleep(300)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()  # blocks until the server is healthy
    assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.poll() is not None else url
    record = json.loads((ws / "prefect" / f"temporary-{proc.pid}.json").read_text())
    assert record["api_url"] == url and record["owner"] == proc.pid
    assert len(_group(record["pid"])) >= 2  # the guard and the server
    return proc, record


def test_temporary_server_goes_with_its_process(tmp_path: Path) -> None:
    from flows import server

    ws = tmp_path / "ws"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TESSERA_", "MLFLOW_"))}
    env.update({"TESSERA_WORKSPACE": str(ws), "PYTHONPATH": str(ROOT)})
    owners = []
    try:
        # SIGTERM: the owner's handler stops the server, then the owner dies of the signal
        proc, record = _start_owner(ws, env)
        owners.append(proc)
        assert server.healthy(record["api_url"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM
        assert _gone(record["pid"]), _group(record["pid"])
        assert not server.healthy(record["api_url"])
        assert not (ws / "prefect" / f"temporary-{proc.pid}.json").exists()

        # kill -9: no handler runs; the guard sees its parent go and stops the server
        proc, record = _start_owner(ws, env)
        owners.append(proc)
        proc.kill()
        proc.wait(timeout=10)
        assert _gone(record["pid"]), _group(record["pid"])

        # `tessera flows down` finds it by its record
        proc, record = _start_owner(ws, env)
        owners.append(proc)
        down = subprocess.run(
            [sys.executable, "-m", "cli.main", "flows", "down"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert f"temporary server (pid {record['pid']})" in down.stdout, down.stdout + down.stderr
        assert _gone(record["pid"], timeout_s=5), _group(record["pid"])
        assert not list((ws / "prefect").glob("temporary-*.json"))  # the kill -9 one's record too
    finally:
        for proc in owners:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
