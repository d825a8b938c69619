"""Plain-dict checkpoints, loaded with ``weights_only=True``.

Schema (version 1)::

    {
      "schema": 1,
      "arch": "mae_vit_tiny_patch4",   # a name in tessera.models.registry
      "config": {...},                  # exactly the factory's keyword arguments
      "model": state_dict,
      "optimizer": state_dict | None,
      "epoch": int, "step": int,
      "rng": {"torch": ByteTensor} | None,
      "data_version": {"md5": str, "files": int, "size": int} | None,
      "classes": [str, ...] | None,     # where there is a head
      "extra": {...},                   # the step's own settings, TTT defaults, metrics, ...
    }

Writes are atomic (temporary file + rename) so a crash mid-save leaves the previous checkpoint.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from tessera.errors import CheckpointError

SCHEMA = 1
REQUIRED = ("schema", "arch", "config", "model")


def make(
    arch: str,
    config: dict[str, Any],
    model: dict[str, torch.Tensor],
    *,
    optimizer: dict[str, Any] | None = None,
    epoch: int = 0,
    step: int = 0,
    data_version: dict[str, Any] | None = None,
    classes: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    rng: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a checkpoint dict in the current schema."""
    return {
        "schema": SCHEMA,
        "arch": arch,
        "config": config,
        "model": model,
        "optimizer": optimizer,
        "epoch": epoch,
        "step": step,
        "rng": rng,
        "data_version": data_version,
        "classes": classes,
        "extra": extra or {},
    }


def weights_digest(ckpt: dict[str, Any]) -> str:
    """The sha256 of a checkpoint's weights (names, dtypes, shapes and bytes, in name order): what an
    evaluation says it measured, whatever else (the policy, tags) the file carries."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(ckpt["model"]):
        t = ckpt["model"][name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save(ckpt: dict[str, Any], path: str | Path) -> Path:
    """Write ``ckpt`` atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load(path: str | Path, *, arch: str | None = None, map_location: str = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; check its schema and, if given, its architecture name.

    Raises:
        CheckpointError: missing or corrupt file, unknown schema, or another architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a Tessera checkpoint: {e}") from e
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED):
        raise CheckpointError(f"checkpoint {path} is not a Tessera checkpoint (needs keys {REQUIRED})")
    if ckpt["schema"] != SCHEMA:
        raise CheckpointError(f"checkpoint {path} has schema {ckpt['schema']}, expected {SCHEMA}")
    if arch is not None and ckpt["arch"] != arch:
        raise CheckpointError(f"checkpoint {path} holds a {ckpt['arch']!r} model, expected {arch!r}")
    return ckpt
