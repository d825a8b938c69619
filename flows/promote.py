"""The ``promote`` flow: run the gate on the challenger release and record the decision.

Thin: the gate, the lock and the alias moves live in ``lifecycle/promotion.py``; this flow adds the
champion's re-evaluation on the current data (the evaluate component), a Prefect markdown artifact
with the decision and its numbers, and the command-line entry ``tessera flows promote``.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from components.command import data_folder
from lifecycle import promotion, tracking
from tessera.config import load_params, section_of

DECISION_KEY = "promotion-decision"


def evaluator(params: dict[str, Any], data: Path, corrupted: Path) -> promotion.Reevaluate:
    """A callback that evaluates a classifier checkpoint on the current test data (evaluate component)."""

    def reevaluate(ckpt: Path) -> dict[str, float]:
        from components import evaluate

        cfg = section_of(evaluate.Config, params, "evaluate")
        with tempfile.TemporaryDirectory() as out:
            return dict(evaluate.run(cfg, data, corrupted, ckpt, Path(out)))

    return reevaluate


@flow(name="promote", log_prints=True)
def promote_flow(
    release: str | None = None,
    params_path: str = "params.yaml",
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    dry_run: bool = False,
    force: bool = False,
    reason: str = "",
    data_md5: str | None = None,
    root: str = ".",
) -> dict[str, Any]:
    """Promote ``release`` (default: the current challenger) through the gate."""
    from tessera.config import deep_merge

    params = deep_merge(load_params(Path(root) / params_path, preset), overrides or {})
    data = Path(root) / data_folder(params)
    corrupted = data.with_name(f"{data.name}-c")
    decision = promotion.promote(
        release,
        section_of(promotion.Config, params, "promote"),
        section_of(tracking.Config, params, "mlflow"),
        dry_run=dry_run,
        force=force,
        reason=reason,
        data_md5=data_md5,
        reevaluate=evaluator(params, data, corrupted),
    )
    get_run_logger().info(
        "promotion of %s: %s (%s)",
        decision.release,
        "promoted" if decision.promoted else "not promoted",
        decision.reason,
    )
    create_markdown_artifact(
        key=DECISION_KEY, markdown=decision.markdown(), description="promotion gate decision"
    )
    return dataclasses.asdict(decision)
