"""One data version, end to end: ``dvc.lock`` -> the checkpoint -> the registry tag -> a served answer.

A tiny DVC project whose ``data`` stage is run by ``dvc repro``; ``tessera pretrain`` (no
``--data-version``) reads the version dvc.lock records and hands it to the step, which stamps it in
the checkpoint; the registry copies the stamp to the version's tag; TorchServe, serving the version
packaged from the registry, reads it from the checkpoint and names it in every answer.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from serving_helpers import png, wait_ready
from typer.testing import CliRunner

from serving import management, package, server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DVC_YAML = {
    "stages": {
        "data": {
            "cmd": "mkdir -p data && rm -rf data/tiny && cp -r source data/tiny",
            "deps": ["source"],
            "outs": ["data/tiny"],
        }
    }
}
PARAMS = {
    "data": {"name": "tiny"},
    "pretrain": {"arch": "mae_vit_micro_patch4", "epochs": 1, "batch_size": 8, "grid_every": 0},
}


def _project(root: Path) -> Path:
    from lifecycle import lineage

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2), ("test", 2)):
        for cls in ("a", "b"):
            folder = root / "source" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    lineage.run_dvc(["repro", "data"], cwd=root)
    return root


def test_one_data_version_from_dvc_lock_to_a_served_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli.main import app
    from lifecycle import registry, tracking
    from tessera import checkpoint

    project = _project(tmp_path / "project")
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    locked = lock["stages"]["data"]["outs"][0]["md5"]
    assert locked.endswith(".dir")

    monkeypatch.chdir(project)
    result = CliRunner().invoke(
        app, ["pretrain", "--data", "data/tiny", "--out", "runs/pretrain", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    stamped = checkpoint.load(project / "runs" / "pretrain" / "encoder.pt")["data_version"]
    assert stamped["md5"] == locked

    monkeypatch.setenv("TESSERA_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("TESSERA_MLFLOW_URI", f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}")
    client = tracking.client()
    run = client.create_run(tracking.experiment_id(client)).info.run_id
    versions = registry.register_release(
        client, run, {"encoder": project / "runs" / "pretrain" / "encoder.pt"}
    )
    tag = client.get_model_version(registry.BUNDLES["encoder"], versions["encoder"]).tags["data_version"]
    assert tag == locked

    home = tmp_path / "ts"
    uri = f"models:/{registry.BUNDLES['encoder']}/{versions['encoder']}"
    mar, name, version = package.package_uri(uri, home / "model-store", package.Config(max_images=2))
    srv = server.start(home, "local", server.Ports.free(), models={name: mar.name})
    try:
        wait_ready(srv, name)
        answer = management.predict(srv, name, png(3), {"Content-Type": "image/png"}).json()
    finally:
        server.stop(home)
    assert answer["model_version"] == version == versions["encoder"]
    assert answer["data_version"] == stamped["md5"] == tag == locked
