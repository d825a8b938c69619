"""The train-generator component: outputs, per-epoch reports, resume, bad input, and a slow quality check."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from generators_helpers import ENCODER_ARCH

from components.train_generator import Config, main, run
from tessera import checkpoint
from tessera.config import section_of
from tessera.errors import CheckpointError, ConfigError
from tessera.generators import ICGAN
from tessera.models import registry

DV = {"md5": "0f0f0f0f.dir", "files": 1, "size": 1}  # the data version every run is given

TINY = Config(
    epochs=2,
    steps_per_epoch=3,
    batch_size=8,
    k=5,
    z_dim=16,
    g_ch=8,
    d_ch=8,
    cond_dim=16,
    eval_samples=24,
    kid_subset_size=12,
    kid_subsets=5,
    grid_rows=3,
    grid_cols=4,
    progress=False,
)


class ListTracker:
    def __init__(self, fail_on: str | None = None) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.artifacts: list[str] = []
        self.fail_on = fail_on

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append((step, metrics))

    def log_artifact(self, path: str | Path) -> None:
        if self.fail_on and Path(path).name == self.fail_on:
            raise KeyboardInterrupt("simulated crash")
        self.artifacts.append(str(path))


def test_run_writes_checkpoint_metrics_and_grids(tiny_data: Path, encoder_ckpt: Path, tmp_path: Path) -> None:
    tracker = ListTracker()
    m = run(TINY, tiny_data, encoder_ckpt, tmp_path, tracker=tracker, data_version=DV)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == pytest.approx(m)
    for key in ("fd", "kid", "kid_std", "fd_initial", "n_real", "n_fake", "steps"):
        assert key in m
    assert m["n_real"] == 24 and m["n_fake"] == 24 and m["steps"] == 6 and m["k"] == 5
    assert [s for s, _ in tracker.metrics] == [1, 2]
    assert {"fd", "kid", "d_loss", "g_loss"} <= set(tracker.metrics[0][1])
    for e in (0, 1, 2):
        assert (tmp_path / "grids" / f"samples_epoch{e:03d}.png").is_file()
    from PIL import Image

    grid = Image.open(tmp_path / "grids" / "samples.png")  # 3 rows x (1 + 4) columns of 32 px at scale 2
    assert grid.size == (5 * 64 + 6 * 2, 3 * 64 + 4 * 2)
    ckpt = checkpoint.load(tmp_path / "generator.pt", arch="icgan")
    model = registry.from_checkpoint(ckpt)  # self-contained: no encoder file needed
    assert isinstance(model, ICGAN) and model.bank.shape == (48, 64)
    assert model.sample(2, seed=0).shape == (2, 3, 32, 32)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    ck = checkpoint.load(out / "generator.pt")
    return {
        **{f"g.{k}": v for k, v in ck["extra"]["train"]["generator"].items()},
        **{f"d.{k}": v for k, v in ck["extra"]["train"]["discriminator"].items()},
        **{f"ema.{k}": v for k, v in ck["model"].items()},
    }


def test_interrupted_run_resumes_to_the_uninterrupted_result(
    tiny_data: Path, encoder_ckpt: Path, tmp_path: Path
) -> None:
    cfg = replace(TINY, epochs=3)
    straight = run(cfg, tiny_data, encoder_ckpt, tmp_path / "a", data_version=DV)
    with pytest.raises(KeyboardInterrupt):  # dies during epoch 2, after epoch 1's checkpoint
        run(
            cfg,
            tiny_data,
            encoder_ckpt,
            tmp_path / "b",
            tracker=ListTracker(fail_on="samples_epoch002.png"),
            data_version=DV,
        )
    assert checkpoint.load(tmp_path / "b" / "generator.pt")["epoch"] == 1
    resumed = run(cfg, tiny_data, encoder_ckpt, tmp_path / "b", data_version=DV)
    assert resumed["steps"] == straight["steps"] == 9
    assert resumed["fd"] == pytest.approx(straight["fd"], rel=1e-4, abs=1e-6)
    assert resumed["fd_initial"] == pytest.approx(straight["fd_initial"])
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key].float(), wb[key].float(), atol=1e-5), key


def test_resume_refuses_another_encoder_or_architecture(
    tiny_data: Path, encoder_ckpt: Path, tmp_path: Path
) -> None:
    run(replace(TINY, epochs=1), tiny_data, encoder_ckpt, tmp_path / "o", data_version=DV)
    other = tmp_path / "other.pt"
    checkpoint.save(
        checkpoint.make(
            ENCODER_ARCH, registry.config_of(ENCODER_ARCH), registry.build(ENCODER_ARCH).state_dict()
        ),
        other,
    )
    with pytest.raises(CheckpointError, match="another encoder"):
        run(replace(TINY, epochs=2), tiny_data, other, tmp_path / "o", data_version=DV)
    with pytest.raises(CheckpointError, match="model config"):
        run(replace(TINY, epochs=2, g_ch=12), tiny_data, encoder_ckpt, tmp_path / "o", data_version=DV)


def test_params_section_and_main(tiny_data: Path, encoder_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lr_gen"):
        section_of(Config, {"generator": {"lr_gen": 1.0}}, "generator")
    params = tmp_path / "params.yaml"
    params.write_text(
        "generator:\n  epochs: 1\n  steps_per_epoch: 2\n  batch_size: 8\n  g_ch: 8\n"
        "  d_ch: 8\n  eval_samples: 16\n  kid_subset_size: 8\n  kid_subsets: 3\n"
        "  progress: false\n"
    )
    main(
        [
            "--params",
            str(params),
            "--data",
            str(tiny_data),
            "--encoder",
            str(encoder_ckpt),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
            "--data-version",
            json.dumps(DV),
        ]
    )
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["steps"] == 2
    assert checkpoint.load(tmp_path / "o" / "generator.pt")["data_version"] == DV
    assert (tmp_path / "o" / "tracker.jsonl").is_file()


@pytest.mark.slow
def test_training_brings_generated_images_closer_to_the_data(
    tiny_data: Path, encoder_ckpt: Path, tmp_path: Path
) -> None:
    cfg = replace(
        TINY,
        epochs=3,
        steps_per_epoch=60,
        batch_size=16,
        g_ch=16,
        d_ch=16,
        lr_g=5e-4,
        lr_d=5e-4,
        ema_decay=0.99,
        eval_samples=48,
        kid_subset_size=24,
    )
    m = run(cfg, tiny_data, encoder_ckpt, tmp_path, data_version=DV)
    assert m["steps"] == 180
    assert m["fd"] < 0.5 * m["fd_initial"], m
