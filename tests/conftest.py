"""Shared test settings: no telemetry, deterministic seeds, the gpu marker, and the GPU hidden from
every test that is not marked ``gpu`` (those must give the CPU's answers, as CI has no GPU)."""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MPLBACKEND", "Agg")

import contextlib  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def pg_database() -> Iterator[str]:
    """Create a fresh PostgreSQL database, yield its URI, drop it. Skips when the server at
    127.0.0.1:5432 is unreachable, unless CI=true (the CI machine has one: then it fails)."""
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
        with admin.cursor() as cur:  # WITH (FORCE) also closes MLflow's pooled connections
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture
def pg_uri() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (see :func:`pg_database`)."""
    yield from pg_database()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    global _REAL_IS_AVAILABLE
    import torch

    _REAL_IS_AVAILABLE = torch.cuda.is_available  # before any fixture hides the GPU
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


_REAL_CUDA_ENV = os.environ.get("CUDA_VISIBLE_DEVICES")  # what the machine shows, before any hiding
_REAL_IS_AVAILABLE: Any = None  # torch.cuda.is_available, kept at collection time


@contextlib.contextmanager
def _cuda_visible(visible: bool) -> Iterator[None]:
    """Show or hide the GPU: to torch in this process (``torch.cuda.is_available``) and to every
    process started meanwhile (servers, workers, subprocess steps), through ``CUDA_VISIBLE_DEVICES``."""
    import torch

    saved_env, saved_fn = os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.is_available
    if visible:
        if _REAL_CUDA_ENV is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = _REAL_CUDA_ENV
        torch.cuda.is_available = _REAL_IS_AVAILABLE  # type: ignore[assignment]
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        torch.cuda.is_available = lambda: False  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.cuda.is_available = saved_fn  # type: ignore[assignment]
        if saved_env is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved_env


@pytest.fixture(scope="session", autouse=True)
def _cpu_for_the_session() -> Iterator[None]:
    """Everything runs on the CPU (CI has no GPU; the figures tests compare are the CPU's) ..."""
    with _cuda_visible(False):
        yield


@pytest.fixture(autouse=True)
def _gpu_for_gpu_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """... except the tests marked ``gpu``, which see the GPU (and are skipped without one)."""
    if "gpu" not in request.keywords:
        yield
        return
    with _cuda_visible(True):
        yield


@pytest.fixture(autouse=True)
def _seed() -> None:
    import torch

    torch.manual_seed(0)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A temporary Prefect server (SQLite) for every test that runs flows or tasks; yields its API URL.

    Without it, calling a flow starts Prefect's ephemeral server, which stops only at interpreter exit.
    """
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())
