"""Fixtures for the MLflow/registry/promotion tests: a workspace per test on SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A workspace in tmp_path with MLflow on SQLite (default) or a fresh PostgreSQL database."""
    monkeypatch.setenv("TESSERA_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if request.param == "sqlite":
        monkeypatch.delenv("TESSERA_MLFLOW_URI", raising=False)
        yield "sqlite"
        return
    monkeypatch.setenv("TESSERA_MLFLOW_URI", request.getfixturevalue("pg_uri"))  # tests/conftest.py
    yield "postgresql"


@pytest.fixture
def sqlite_ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TESSERA_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.delenv("TESSERA_MLFLOW_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "ws"


@pytest.fixture(scope="session")
def mae_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micro MAE checkpoint (stands in for every bundle's checkpoint where only bytes matter)."""
    from tessera import checkpoint
    from tessera.models import build

    model = build("mae_vit_micro_patch4")
    ckpt = checkpoint.make("mae_vit_micro_patch4", {}, model.state_dict())
    return checkpoint.save(ckpt, tmp_path_factory.mktemp("ckpt") / "encoder.pt")
