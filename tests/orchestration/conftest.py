"""Fixtures for the MLflow/registry/promotion tests: a workspace per test on SQLite or PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database (dropped afterwards); skip when unreachable unless CI=true."""
    try:
        import psycopg2

        admin = psycopg2.connect(PG_ADMIN, connect_timeout=3)
    except Exception as e:  # unreachable server
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but PostgreSQL at 127.0.0.1:5432 is unreachable: {e}")
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 unreachable ({e}); required only when CI=true")
    admin.autocommit = True
    name = f"tessera_test_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A workspace in tmp_path with MLflow on SQLite (default) or a fresh PostgreSQL database."""
    monkeypatch.setenv("TESSERA_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if request.param == "sqlite":
        monkeypatch.delenv("TESSERA_MLFLOW_URI", raising=False)
        yield "sqlite"
        return
    gen = pg_database()
    uri = next(gen)
    monkeypatch.setenv("TESSERA_MLFLOW_URI", uri)
    yield "postgresql"
    next(gen, None)  # DROP DATABASE ... WITH (FORCE) closes MLflow's pooled connections


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
