"""The pretrain component: outputs, config errors, methods, the typer command, and resuming after
``kill -9`` with the same final step and weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from components.pretrain import Config, run
from tessera import checkpoint
from tessera.config import ConfigError, load_params, section_of
from tessera.errors import CheckpointError, DataError
from tessera.models import embed, from_checkpoint

ROOT = Path(__file__).resolve().parents[2]
VERSION = {"md5": "0123abcd", "files": 80, "size": 1}


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def image_folder(root: Path, n_train: int = 64, n_pool: int = 16) -> Path:
    """Stripes on flat colours in the train/<class>/ + unlabeled/ layout, 32 px."""
    rng = np.random.default_rng(0)

    def img() -> Image.Image:
        a = np.empty((32, 32, 3), np.uint8)
        a[...] = rng.integers(0, 255, 3)
        r = int(rng.integers(0, 24))
        a[r : r + 8] = rng.integers(0, 255, 3)
        return Image.fromarray(a)

    for i in range(n_train):
        d = root / "train" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        img().save(d / f"{i}.png")
    (root / "unlabeled").mkdir(parents=True, exist_ok=True)
    for i in range(n_pool):
        img().save(root / "unlabeled" / f"{i}.png")
    return root


class ListTracker:
    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.artifacts: list[Path] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append((step, metrics))

    def log_artifact(self, path: str | Path) -> None:
        self.artifacts.append(Path(path))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_folder(tmp_path_factory.mktemp("pretrain") / "digits")


def test_mae_run_writes_checkpoint_metrics_grids_and_reports(data: Path, tmp_path: Path) -> None:
    cfg = Config(arch="mae_vit_micro_patch4", epochs=2, batch_size=16, lr=2e-3, grid_every=1)
    tracker = ListTracker()
    metrics = run(cfg, data, tmp_path, tracker, data_version=VERSION, progress=False)
    assert metrics["steps"] == 10 and metrics["epochs"] == 2 and metrics["images"] == 80
    assert metrics["images_per_s"] > 0 and np.isfinite(metrics["loss"])
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    ckpt = checkpoint.load(tmp_path / "encoder.pt", arch="mae_vit_micro_patch4")
    assert (ckpt["epoch"], ckpt["step"], ckpt["data_version"]) == (2, 10, VERSION)
    assert ckpt["optimizer"] is not None and ckpt["config"]["mask_ratio"] == 0.75
    assert ckpt["config"]["norm_pix_loss"] is False and ckpt["extra"]["pretrain"]["epochs"] == 2
    assert [s for s, _ in tracker.metrics] == [1, 2]
    assert tracker.metrics[1][1]["pretrain/loss"] == pytest.approx(metrics["loss"])
    assert tracker.artifacts == [tmp_path / "grids" / "recon_e001.png", tmp_path / "grids" / "recon_e002.png"]
    with Image.open(tracker.artifacts[-1]) as im:  # 3 rows (original / masked / reconstruction) of 8
        assert im.size[0] > 2 * im.size[1]
    model = from_checkpoint(ckpt)
    assert embed(model, torch.rand(2, 3, 32, 32)).shape == (2, 64)


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_contrastive_methods_run_through_the_same_component(method: str, data: Path, tmp_path: Path) -> None:
    cfg = Config(method=method, arch=f"{method}_vit_micro_patch4", epochs=1, batch_size=16)
    tracker = ListTracker()
    metrics = run(cfg, data, tmp_path, tracker, data_version=json.dumps(VERSION), progress=False)
    assert metrics["steps"] == 5 and tracker.artifacts == []  # grids are MAE's
    ckpt = checkpoint.load(tmp_path / "encoder.pt", arch=f"{method}_vit_micro_patch4")
    assert ckpt["data_version"] == VERSION  # stamped as given (JSON text here)
    model = from_checkpoint(ckpt)
    assert embed(model, torch.rand(2, 3, 32, 32)).shape == (2, 64)


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"pretrain": {"epochs": 1, "mask_ration": 0.5}}))
    with pytest.raises(ConfigError, match="mask_ration"):
        section_of(Config, load_params(params), "pretrain")
    with pytest.raises(ConfigError, match="not a simclr model"):
        run(
            Config(method="simclr", arch="mae_vit_micro_patch4"),
            tmp_path,
            tmp_path / "o",
            data_version=VERSION,
        )
    with pytest.raises(ConfigError, match="method"):
        run(Config(method="dino"), tmp_path, tmp_path / "o", data_version=VERSION)


def test_a_step_without_a_data_version_refuses_to_write_a_model(data: Path, tmp_path: Path) -> None:
    cfg = Config(arch="mae_vit_micro_patch4", epochs=1, batch_size=16, grid_every=0)
    for missing in (None, "", {"files": 3}):
        with pytest.raises(DataError, match="data version"):
            run(cfg, data, tmp_path, data_version=missing, progress=False)
    assert not (tmp_path / "encoder.pt").exists()
    run(cfg, data, tmp_path, data_version="0123abcd.dir", progress=False)  # a bare md5 is enough
    assert checkpoint.load(tmp_path / "encoder.pt")["data_version"] == {"md5": "0123abcd.dir"}


def test_rerun_refuses_other_arch_changed_settings_and_corrupt_files(data: Path, tmp_path: Path) -> None:
    cfg = Config(arch="mae_vit_micro_patch4", epochs=1, batch_size=16, grid_every=0)
    run(cfg, data, tmp_path, data_version=VERSION, progress=False)
    again = run(cfg, data, tmp_path, data_version=VERSION, progress=False)  # finished: nothing to train
    assert again["steps"] == 5
    with pytest.raises(CheckpointError, match="holds a 'mae_vit_micro_patch4'.*delete"):
        run(
            Config(method="byol", arch="byol_vit_micro_patch4", epochs=1),
            data,
            tmp_path,
            data_version=VERSION,
            progress=False,
        )
    with pytest.raises(CheckpointError, match=r"\['lr'\] differ"):
        run(
            Config(arch="mae_vit_micro_patch4", epochs=1, batch_size=16, lr=0.1),
            data,
            tmp_path,
            data_version=VERSION,
            progress=False,
        )
    with pytest.raises(CheckpointError, match="other data"):
        run(cfg, data, tmp_path, data_version={"md5": "ffff"}, progress=False)
    ckpt = tmp_path / "encoder.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        run(cfg, data, tmp_path, data_version=VERSION, progress=False)
    fresh = run(
        Config(arch="mae_vit_micro_patch4", epochs=1, batch_size=16, grid_every=0, resume=False),
        data,
        tmp_path,
        data_version=VERSION,
        progress=False,
    )
    assert fresh["steps"] == 5


def test_typer_command_and_module_entry_point(data: Path, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from components import pretrain

    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {"pretrain": {"arch": "mae_vit_micro_patch4", "epochs": 1, "batch_size": 32, "grid_every": 0}}
        )
    )
    app = typer.Typer()
    app.command()(pretrain.cli)
    app.command("other")(lambda: None)  # two commands, so typer keeps the name `cli`
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "cli",
            "--params",
            str(params),
            "--data",
            str(data),
            "--out",
            str(out),
            "--data-version",
            json.dumps(VERSION),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert checkpoint.load(out / "encoder.pt")["data_version"] == VERSION
    assert (out / "tracker.jsonl").read_text().count("pretrain/loss") == 1
    res = CliRunner().invoke(
        app,
        [
            "cli",
            "--params",
            str(params),
            "--data",
            str(tmp_path / "nodata"),
            "--out",
            str(tmp_path / "o2"),
            "--data-version",
            "abc",
        ],
    )
    assert res.exit_code == 2 and "not found" in res.output


def _cmd(params: Path, data: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "components.pretrain",
        "--params",
        str(params),
        "--data",
        str(data),
        "--out",
        str(out),
        "--data-version",
        json.dumps(VERSION),
        "--no-progress",
    ]


@pytest.mark.slow
def test_resume_after_kill_9_matches_an_uninterrupted_run(data: Path, tmp_path: Path) -> None:
    section = {"arch": "mae_vit_micro_patch4", "epochs": 6, "batch_size": 8, "lr": 2e-3, "grid_every": 0}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"pretrain": section}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(params, data, killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not (killed / "encoder.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode() if proc.stderr else ""
    interrupted_at = checkpoint.load(killed / "encoder.pt")["epoch"]
    assert 1 <= interrupted_at < 6
    subprocess.run(_cmd(params, data, killed), cwd=ROOT, env=env, check=True, capture_output=True)
    resumed = checkpoint.load(killed / "encoder.pt")
    reference = run(Config(**section), data, tmp_path / "whole", data_version=VERSION, progress=False)
    whole = checkpoint.load(tmp_path / "whole" / "encoder.pt")
    assert resumed["step"] == whole["step"] == reference["steps"] == 60
    assert [h["epoch"] for h in resumed["extra"]["history"]] == [1, 2, 3, 4, 5, 6]
    for k, v in whole["model"].items():
        assert torch.allclose(resumed["model"][k], v, atol=1e-5), k
