"""The Kubeflow pipeline: the committed YAML is current, and the lightweight twin runs under kfp.local."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows import kfp_pipeline as pipeline
from lifecycle import lineage, registry, tracking

ROOT = Path(__file__).resolve().parents[2]


def test_compiled_pipeline_yaml_is_current_and_requests_gpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(pipeline.IMAGE_ENV, raising=False)
    fresh = pipeline.compile_yaml(tmp_path / "retrain.yaml")
    committed = ROOT / "infra" / "kfp" / "retrain.yaml"
    stale = "infra/kfp/retrain.yaml is stale: run `tessera kfp compile`"
    assert committed.read_text() == fresh.read_text(), stale
    spec = yaml.safe_load(fresh.read_text())
    executors = spec["deploymentSpec"]["executors"]
    gpu = {
        name
        for name, ex in executors.items()
        if "accelerator" in ex.get("container", {}).get("resources", {})
    }
    assert gpu == {"exec-pretrain", "exec-generator", "exec-adapt"}
    for ex in executors.values():
        if "container" in ex:
            assert ex["container"]["image"] == pipeline.DEFAULT_IMAGE
            # the steps as `python -m components.<step>`; registration is the CLI's (`tessera registry`)
            assert ex["container"]["command"][:2] in (["python", "-m"], ["tessera", "registry"])
    tasks = spec["root"]["dag"]["tasks"]
    assert all(
        t.get("retryPolicy", {}).get("maxRetryCount") == 2 for n, t in tasks.items() if "importer" not in n
    )


@pytest.mark.slow
def test_lightweight_pipeline_runs_end_to_end_under_kfp_local(
    tiny_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.kfp_local import run_local
    from tessera.config import load_params

    monkeypatch.setenv("TESSERA_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.delenv("TESSERA_MLFLOW_URI", raising=False)
    params = load_params(tiny_project / "params.yaml")
    data = tiny_project / "data"
    version = lineage.version_for(data / "tiny")  # what `tessera kfp run-local` hands the pipeline
    out = run_local(params, data / "tiny", version, data / "tiny-c", tmp_path / "kfp")
    assert out["promoted"], out
    client = tracking.client()
    assert registry.release_of(client) == out["release"]
    versions = registry.release_versions(client, out["release"])
    assert set(versions) == {"encoder", "classifier", "generator"}
    assert {mv.tags["data_version"] for mv in versions.values()} == {version["md5"]}  # the parameter's
