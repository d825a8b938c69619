"""Fixtures of the adaptation tests: a tiny digits folder + corrupted set, a trained micro MAE."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from adapt_helpers import MAE_ARCH, as_tensor, digits_32, train_mae, write_dataset

from tessera import checkpoint
from tessera.adapt.heads import TTTClassifier
from tessera.models import registry


@pytest.fixture(scope="session")
def digits_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_dataset(tmp_path_factory.mktemp("adapt-data"))


@pytest.fixture(scope="session")
def trained_mae() -> torch.nn.Module:
    x, _ = digits_32(40)
    return train_mae(as_tensor(x))


@pytest.fixture(scope="session")
def encoder_path(tmp_path_factory: pytest.TempPathFactory, trained_mae: torch.nn.Module) -> Path:
    path = tmp_path_factory.mktemp("adapt-enc") / "encoder.pt"
    checkpoint.save(checkpoint.make(MAE_ARCH, registry.config_of(MAE_ARCH), trained_mae.state_dict()), path)
    return path


@pytest.fixture()
def classifier(trained_mae: torch.nn.Module) -> TTTClassifier:
    """A TTT classifier on the trained micro MAE with a random head (fresh per test)."""
    torch.manual_seed(1)
    model = TTTClassifier(MAE_ARCH, registry.config_of(MAE_ARCH), num_classes=10, rotation_head=True)
    model.backbone.load_state_dict(trained_mae.state_dict())
    # give the BatchNorm realistic statistics
    model.train()
    with torch.no_grad():
        model.head(model.features(torch.rand(32, 3, 32, 32)))
    return model.eval()


@pytest.fixture()
def images() -> torch.Tensor:
    x, _ = digits_32(1, offset=60)  # one per class
    return as_tensor(x)[:6]
