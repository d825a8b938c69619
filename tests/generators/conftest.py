"""Fixtures of the generator tests: tiny data, a briefly trained micro MAE and its checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from generators_helpers import ENCODER_ARCH, as_tensor, shapes, train_mae, write_folder

from tessera import checkpoint
from tessera.models import registry


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("gen-data") / "shapes")


@pytest.fixture(scope="session")
def tiny_mae() -> torch.nn.Module:
    return train_mae(as_tensor(shapes(96, seed=1)))


@pytest.fixture(scope="session")
def encoder_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_mae: torch.nn.Module) -> Path:
    path = tmp_path_factory.mktemp("gen-enc") / "encoder.pt"
    ckpt = checkpoint.make(ENCODER_ARCH, registry.config_of(ENCODER_ARCH), tiny_mae.state_dict())
    checkpoint.save(ckpt, path)
    return path


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The networks here are tiny: one intra-op thread is as fast, and far faster on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
