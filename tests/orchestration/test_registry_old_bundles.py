"""Bundles already in a registry keep loading after the code moves.

``tests/fixtures/encoder_bundle_v0`` was written by ``components.registry.log_bundle`` at commit
4d78d8c (before the lifecycle adapters left ``components/``): a micro MAE with a stamped data version.
Its ``bundle_model.py`` runs ``from components.registry import CheckpointBundle``, as every bundle
registered so far does, so that import must keep working.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import torch

from tessera import checkpoint
from tessera.models import from_checkpoint
from tessera.models.embed import embed

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "encoder_bundle_v0"


def test_a_bundle_written_by_the_old_code_loads_and_predicts(tmp_path: Path) -> None:
    bundle = shutil.copytree(FIXTURE, tmp_path / "bundle")
    assert "from components.registry import CheckpointBundle" in (bundle / "bundle_model.py").read_text()
    loaded = mlflow.pyfunc.load_model(str(bundle))
    wrapper = loaded.unwrap_python_model()
    assert type(wrapper).__name__ == "CheckpointBundle"
    assert wrapper.checkpoint["data_version"]["md5"] == "0123456789abcdef0123456789abcdef.dir"

    x = torch.rand(3, 3, 32, 32)
    got = loaded.predict(x.numpy())
    reference = from_checkpoint(checkpoint.load(bundle / "artifacts" / "encoder.pt")).eval()
    with torch.no_grad():
        want = embed(reference, x).numpy()
    assert got.shape == (3, 64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
