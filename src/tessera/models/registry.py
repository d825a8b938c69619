"""The explicit registry of named model factories.

A checkpoint stores ``arch`` (a name here) and ``config`` (keyword arguments of the factory); serving,
MLflow bundles and resuming rebuild the model with :func:`build`. Names say the architecture, e.g.
``mae_vit_tiny_patch4`` (32 px, patch 4, dim 192, depth 6: the CPU config) or
``mae_vit_base_patch16`` (the paper's ViT-B/16 at 224 px).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from tessera.errors import CheckpointError

Factory = Callable[..., nn.Module]
_REGISTRY: dict[str, tuple[Factory, dict[str, Any]]] = {}


def register(name: str, factory: Factory, **defaults: Any) -> None:
    """Register ``factory`` under ``name`` with default keyword arguments."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = (factory, defaults)


def names() -> list[str]:
    """Every registered model name."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def config_of(name: str, **overrides: Any) -> dict[str, Any]:
    """The full keyword arguments ``build(name, **overrides)`` would use."""
    _ensure_loaded()
    if name not in _REGISTRY:
        raise CheckpointError(f"unknown model {name!r}; registered: {sorted(_REGISTRY)}")
    return {**_REGISTRY[name][1], **overrides}


def build(name: str, **overrides: Any) -> nn.Module:
    """Build the model registered as ``name``; ``overrides`` replace its defaults."""
    kwargs = config_of(name, **overrides)
    return _REGISTRY[name][0](**kwargs)


# The modules whose import registers factories: the encoders' zoo, the TTT classifier, the IC-GAN.
_REGISTERING_MODULES = ("tessera.models.zoo", "tessera.adapt.heads", "tessera.generators.bundle")


def _ensure_loaded() -> None:
    # Imported lazily (on first lookup) to avoid import cycles: those modules import this one.
    import importlib

    for module in _REGISTERING_MODULES:
        importlib.import_module(module)


def from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint describes (``arch`` + ``config``) and load its weights."""
    model = build(ckpt["arch"], **ckpt["config"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint weights do not fit a {ckpt['arch']!r} model with its config: {e}"
        ) from e
    return model
