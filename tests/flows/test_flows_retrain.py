"""The retrain flow end to end on a tiny DVC-versioned project, under one Prefect test harness."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lifecycle import lineage, registry, release, tracking
from tessera import checkpoint

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _check_release(summary: dict, project: Path) -> None:
    """The things every completed retrain must leave in MLflow."""
    client = tracking.client()
    md5 = lineage.data_version(project / "data" / "tiny")["md5"]
    recorded = yaml.safe_load((project / "data" / "tiny.dvc").read_text())["outs"][0]["md5"]
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.inputs.dataset_inputs[0].dataset.digest == md5 == recorded  # DVC md5 == MLflow digest
    assert parent.data.tags["data_version"] == md5 and "git_commit" in parent.data.tags
    assert "clean/accuracy" in parent.data.metrics
    assert summary["decision"]["promoted"], summary["decision"]
    assert set(summary["versions"]) == {"encoder", "classifier", "generator"}
    for kind in summary["versions"]:
        mv = registry.version_by_alias(client, kind, "champion")
        assert mv.tags["release"] == summary["mlflow_run_id"] and mv.tags["data_version"] == md5
        ref = release.resolve(f"models:/{registry.BUNDLES[kind]}/{mv.version}")
        assert checkpoint.load(ref.path)["data_version"]["md5"] == md5  # stamped by the step, as passed


def _artifact(api_url: str, key: str) -> str:
    """The newest Prefect artifact with ``key``, read over the server's REST API."""
    import httpx

    body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1, "offset": 0}
    found = httpx.post(f"{api_url}/artifacts/filter", json=body, timeout=30).json()
    assert found, f"no Prefect artifact {key!r}"
    return str(found[0]["data"])


def test_retrain_killed_after_pretraining_resumes_from_cache_then_skips(
    prefect_harness: str, tiny_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.retrain import FAULT_ENV, retrain

    monkeypatch.setenv("TESSERA_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.delenv("TESSERA_MLFLOW_URI", raising=False)
    env = {**os.environ, FAULT_ENV: "pretrain", "PREFECT_API_URL": prefect_harness, "PYTHONPATH": str(ROOT)}
    code = f"from flows.retrain import retrain; retrain(root={str(tiny_project)!r}, deploy=False)"
    crashed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert crashed.returncode == 137, crashed.stderr[-3000:]
    encoder = next((tmp_path / "ws" / "runs" / "pretrain").glob("*/encoder.pt"))
    mtime = encoder.stat().st_mtime_ns

    summary = retrain(root=str(tiny_project), deploy=False)
    assert summary["steps"]["pretrain"]["cached"] is True  # not pretrained again
    assert encoder.stat().st_mtime_ns == mtime
    assert summary["steps"]["adapt"]["cached"] is False
    _check_release(summary, tiny_project)
    client = tracking.client()
    children = client.search_runs(
        [tracking.experiment_id(client)], f"tags.mlflow.parentRunId = '{summary['mlflow_run_id']}'"
    )
    steps = {r.data.tags["mlflow.runName"]: r for r in children}
    assert {"generator", "adapt", "evaluate"} <= set(steps)
    assert any(k.startswith("system/") for k in steps["adapt"].data.metrics)
    assert any(a.path.endswith(".png") for a in client.list_artifacts(steps["evaluate"].info.run_id))
    assert "| clean/accuracy |" in _artifact(prefect_harness, "retrain-report")
    assert "PROMOTED" in _artifact(prefect_harness, "promotion-decision")

    again = retrain(root=str(tiny_project), deploy=False)  # same data, same params: nothing to do
    assert "nothing to do" in again["skipped"] and "mlflow_run_id" not in again


def test_retrain_with_mlflow_on_postgresql(
    prefect_harness: str, tiny_project: Path, tmp_path: Path, pg_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.retrain import retrain

    monkeypatch.setenv("TESSERA_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("TESSERA_MLFLOW_URI", pg_uri)
    summary = retrain(root=str(tiny_project), deploy=False)
    assert summary["tracking_uri"].startswith("postgresql+psycopg2://")
    assert not any(s["cached"] for s in summary["steps"].values())
    _check_release(summary, tiny_project)


def test_retrain_stops_on_tampered_data(
    prefect_harness: str, tiny_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from flows.retrain import retrain
    from tessera.errors import DataError

    monkeypatch.setenv("TESSERA_WORKSPACE", str(tmp_path / "ws"))
    project = Path(shutil.copytree(tiny_project, tmp_path / "p"))
    victim = project / "data" / "tiny" / "test" / "a" / "0.png"
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(DataError, match="0.png"):
        retrain(root=str(project), deploy=False)
