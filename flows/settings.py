"""Prefect settings for Tessera: everything in the workspace folder unless told otherwise.

Call :func:`configure` before importing ``prefect`` (its settings are read at import time). Values
already in the environment win, so a remote server (``PREFECT_API_URL``) or a PostgreSQL database
(``TESSERA_PREFECT_DB_URL=postgresql+asyncpg://user@host:5432/prefect``) is one variable away.
"""

from __future__ import annotations

import os
from pathlib import Path

from lifecycle.tracking import workspace

DB_ENV = "TESSERA_PREFECT_DB_URL"
# Seconds Prefect waits for its ephemeral (local, in-process) server. Prefect's default, 20 s, is
# shorter than the first start on a fresh SQLite database takes on a slow 2-core machine (the
# database migrations run then): `make demo` failed with "Timed out while attempting to connect to
# ephemeral Prefect API server" on 2026-12-03.
EPHEMERAL_STARTUP_TIMEOUT_S = 180


def prefect_home(ws: Path | None = None) -> Path:
    """``<workspace>/prefect``: the Prefect home (profiles, local result storage, SQLite database)."""
    path = (ws or workspace()) / "prefect"
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_url(ws: Path | None = None) -> str:
    """The Prefect server's database: ``TESSERA_PREFECT_DB_URL`` or SQLite in the Prefect home.

    PostgreSQL needs the async driver: ``postgresql+asyncpg://user@host:5432/db``.
    """
    url = os.environ.get(DB_ENV, "")
    if url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url.removeprefix("postgresql://")
    return url or f"sqlite+aiosqlite:///{prefect_home(ws) / 'prefect.db'}"


def environment(ws: Path | None = None) -> dict[str, str]:
    """The environment variables :func:`configure` sets (for subprocesses: server, worker)."""
    home = prefect_home(ws)
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url(ws),
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(EPHEMERAL_STARTUP_TIMEOUT_S),
    }


def configure(ws: Path | None = None) -> dict[str, str]:
    """Set the Prefect variables that are not already set; return the effective values."""
    for key, value in environment(ws).items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in environment(ws)}
