"""The ``tracker`` callback that components report through.

The core library never imports MLflow: a step receives any object with these two methods. Flows pass
an MLflow-backed tracker (``lifecycle/tracking.py``); the command line passes :class:`JsonTracker`
or nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    """What a step may report while it runs."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record scalar metrics at ``step`` (an epoch or an optimizer step)."""

    def log_artifact(self, path: str | Path) -> None:
        """Record a file (a picture, a table) produced by the step."""


class NullTracker:
    """Reports nowhere."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        return None

    def log_artifact(self, path: str | Path) -> None:
        return None


class JsonTracker:
    """Appends every report as one JSON line to a file (the default for command-line runs)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, record: dict[str, object]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._write({"step": step, "metrics": {k: float(v) for k, v in metrics.items()}})

    def log_artifact(self, path: str | Path) -> None:
        self._write({"artifact": str(path)})
