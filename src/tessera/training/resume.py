"""Resume a run from its last checkpoint (the plain-dict schema of :mod:`tessera.checkpoint`).

Any step that saves a checkpoint per epoch (pretraining, the generator) calls :func:`resume` before
training: no file means a fresh start; a file of another architecture, another model config or a
corrupt file is a :class:`~tessera.errors.CheckpointError` that says what to do. A step that resumes
says so (:func:`resumed_from`), in its own log, so the flow logs and the command line show it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tessera import checkpoint
from tessera.errors import CheckpointError
from tessera.training.distributed import unwrap


def rng_state() -> dict[str, torch.Tensor]:
    """The CPU (and CUDA) generator states, for the checkpoint's ``rng`` entry."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def resume(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    arch: str,
    config: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Load ``path`` into ``model`` (and ``optimizer``) if it exists; return the checkpoint or None.

    Raises:
        CheckpointError: corrupt file, another architecture, another model config, or weights that
            do not fit.
    """
    path = Path(path)
    if not path.exists():
        return None
    hint = f"delete {path} (or choose another output folder) to start afresh"
    try:
        ckpt = checkpoint.load(path, arch=arch)
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume: {e}; {hint}") from e
    if config is not None and not _same(ckpt["config"], config):
        raise CheckpointError(
            f"cannot resume: {path} was trained with model config {ckpt['config']}, not {config}; {hint}"
        )
    try:
        unwrap(model).load_state_dict(ckpt["model"])
        if optimizer is not None and ckpt.get("optimizer"):
            optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot resume: {path} does not fit the {arch!r} model: {e}; {hint}") from e
    rng = ckpt.get("rng") or {}
    if isinstance(rng.get("torch"), torch.Tensor):
        torch.set_rng_state(rng["torch"])
    return ckpt


def resumed_from(ckpt: dict[str, Any], path: str | Path, epochs: int | None = None) -> str:
    """The line a resuming step logs: ``resumed from epoch N of M (PATH, step S)``."""
    of = f" of {epochs}" if epochs is not None else ""
    return f"resumed from epoch {int(ckpt.get('epoch', 0))}{of} ({path}, step {int(ckpt.get('step', 0))})"
