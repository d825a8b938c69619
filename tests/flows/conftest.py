"""A tiny DVC-versioned project to run flows on (the Prefect harness is in tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

CLASSES = ("a", "b", "c")
TINY_PARAMS = {
    "data": {"name": "tiny"},
    "pretrain": {
        "arch": "mae_vit_micro_patch4",
        "epochs": 1,
        "batch_size": 16,
        "device": "cpu",
        "grid_every": 1,
        "augment": False,
    },
    "generator": {
        "epochs": 1,
        "steps_per_epoch": 2,
        "batch_size": 8,
        "k": 4,
        "z_dim": 8,
        "g_ch": 8,
        "d_ch": 8,
        "cond_dim": 8,
        "eval_samples": 12,
        "kid_subset_size": 6,
        "kid_subsets": 2,
        "grid_rows": 2,
        "grid_cols": 2,
        "device": "cpu",
        "progress": False,
    },
    "adapt": {"methods": ["linear"], "epochs": 5, "rotation_head": False, "ttt_steps": 1, "ttt_copies": 2},
    "evaluate": {
        "methods": ["frozen", "ttt_mae_episodic"],
        "per_cell": 3,
        "clean_subset": 3,
        "batch_size": 4,
        "progress": False,
    },
    # The bars are easy to tell apart (the flow scores 1.0 on both): a broken step falls below these
    # (chance is 1/3), so "promoted" in the flow tests means the release works.
    "promote": {"min_clean_accuracy": 0.8, "min_corrupted_accuracy": 0.6},
    "mlflow": {"system_metrics_interval_s": 1.0},
}


def _image(cls: int, rng: np.random.Generator) -> Image.Image:
    """32x32 RGB: a bright bar whose orientation/colour names the class, plus noise."""
    x = rng.uniform(0, 60, (32, 32, 3))
    if cls == 0:
        x[12:20, :, 0] = 230
    elif cls == 1:
        x[:, 12:20, 1] = 230
    else:
        x[8:24, 8:24, 2] = 230
    return Image.fromarray(x.astype(np.uint8))


def make_project(root: Path) -> Path:
    """A DVC repository with data/tiny (3 classes), data/tiny-c (1 corruption, 1 severity), params.yaml."""
    rng = np.random.default_rng(0)
    data = root / "data" / "tiny"
    for split, n in (("train", 16), ("val", 3), ("test", 6)):
        for c, name in enumerate(CLASSES):
            (data / split / name).mkdir(parents=True)
            for i in range(n):
                _image(c, rng).save(data / split / name / f"{i}.png")
    for c, name in enumerate(CLASSES):
        out = root / "data" / "tiny-c" / "gaussian_noise" / "3" / name
        out.mkdir(parents=True)
        for i in range(6):
            arr = np.asarray(_image(c, rng), dtype=np.float32) + rng.normal(0, 40, (32, 32, 3))
            Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(out / f"{i}.png")
    (root / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    from lifecycle import lineage

    lineage.add(data)
    lineage.add(root / "data" / "tiny-c")
    return root


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("project"))
