"""A flat folder of unlabelled images, as a new user brings one: imported as a pool, then pretrained on
and used to train the generator (neither needs labels); the classifier step refuses it with a reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from components import adapt, pretrain, train_generator
from components.data import app
from tessera import checkpoint
from tessera.errors import DataError


def test_a_flat_unlabelled_folder_pretrains_and_trains_the_generator(tmp_path: Path) -> None:
    flat = tmp_path / "photos"
    flat.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, format="JPEG")
        (flat / f"IMG_{i:04d}.jpg").write_bytes(buf.getvalue())
    out = CliRunner().invoke(app, ["import", str(flat), "--name", "pool", "--root", str(tmp_path / "data")])
    assert out.exit_code == 0, out.output
    assert "pretrain  yes: 24 images" in out.output and "adapt     no: no labels" in out.output
    data = tmp_path / "data" / "pool"
    assert not (data / "train").exists() and len(list((data / "unlabeled").iterdir())) == 24
    version = {"md5": "pool.dir"}

    cfg = pretrain.Config(arch="mae_vit_micro_patch4", epochs=1, batch_size=8, grid_every=0)
    pretrain.run(cfg, data, tmp_path / "pre", data_version=version, progress=False)
    encoder = tmp_path / "pre" / "encoder.pt"
    assert checkpoint.load(encoder)["data_version"]["md5"] == "pool.dir"

    gen = train_generator.Config(
        epochs=1, steps_per_epoch=2, batch_size=8, k=5, z_dim=16, g_ch=8, d_ch=8, cond_dim=16,
        eval_samples=16, kid_subset_size=8, kid_subsets=2, grid_rows=2, grid_cols=2, progress=False,
    )  # fmt: skip
    metrics = train_generator.run(gen, data, encoder, tmp_path / "gen", data_version=version)
    assert (tmp_path / "gen" / "generator.pt").is_file() and np.isfinite(metrics["fd"])

    with pytest.raises(DataError, match="only an unlabelled pool"):  # no labels: nothing to classify
        adapt.run(adapt.Config(), data, encoder, tmp_path / "adapt", data_version=version)
