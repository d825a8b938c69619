"""Prefect settings: the workspace defaults, and values already in the environment win."""

from __future__ import annotations

import os

import pytest

from flows import settings

KEY = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


@pytest.fixture(autouse=True)
def _restore_environment():
    """configure() writes os.environ itself: put it back as it was after each test."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


def test_the_local_prefect_server_gets_time_to_start_on_a_slow_machine(monkeypatch, tmp_path) -> None:
    for key in settings.environment(tmp_path):  # KEY among them
        monkeypatch.delenv(key, raising=False)
    effective = settings.configure(tmp_path)
    # Prefect's own default (20 s) was too short for a first start on 2 busy cores (2026-12-03)
    assert int(effective[KEY]) == settings.EPHEMERAL_STARTUP_TIMEOUT_S >= 120
    assert effective["PREFECT_HOME"] == str(tmp_path / "prefect")


def test_values_already_in_the_environment_win(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(KEY, "45")
    monkeypatch.setenv(settings.DB_ENV, "postgresql://u@127.0.0.1:5432/prefect")
    monkeypatch.delenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", raising=False)
    effective = settings.configure(tmp_path)
    assert effective[KEY] == "45"
    assert (
        effective["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == "postgresql+asyncpg://u@127.0.0.1:5432/prefect"
    )
