"""Run one adaptation method on one evaluation set: the frozen model and its test-time adaptations.

Methods (names used in metric keys):

* ``frozen``: the classifier as trained.
* ``normstat``: BatchNorm statistics of the head mixed with the test batch's (Schneider et al. 2020),
  one request (``request_images`` images) at a time, as the serving endpoint applies it.
* ``tent``: entropy minimisation on LayerNorm affine parameters with BatchNorm batch statistics
  (Wang et al. 2021), online along the cell in batches of ``tent.batch_size``, reset between cells.
* ``tent_episodic``: TENT per request (reset, ``tent.steps`` updates on the request's images, answer
  with the adapted weights), as the serving endpoint applies it.
* ``rotation_episodic`` / ``rotation_online``: rotation TTT (Sun et al. 2020).
* ``ttt_mae_episodic`` / ``ttt_mae_online``: TTT-MAE (Gandelsman et al. 2022); episodic uses the
  batched per-request implementation unless ``batched`` is off.

Every method leaves the model as it found it (online methods are reset at the end of each cell).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from tessera.adapt.batched import adapt_batch
from tessera.adapt.heads import TTTClassifier
from tessera.adapt.normstat import normstat_predict
from tessera.adapt.probe import predict
from tessera.adapt.rotation import rotation_trainer
from tessera.adapt.tent import Tent, TentSettings, tent_episodic
from tessera.adapt.test_time import TTTSettings
from tessera.adapt.ttt_mae import require_decoder, ttt_mae_trainer
from tessera.errors import ConfigError, ModelError
from tessera.names import EVAL_METHODS

METHODS = EVAL_METHODS


@dataclass(frozen=True)
class MethodSettings:
    """Settings of every method (see ``components/evaluate.py`` for their params keys)."""

    ttt: TTTSettings = field(default_factory=TTTSettings)
    rotation: TTTSettings = field(default_factory=lambda: TTTSettings(steps=1, lr=1e-3))
    tent: TentSettings = field(default_factory=TentSettings)
    normstat_prior: float = 16.0
    batched: bool = True  # episodic TTT-MAE through adapt_batch (stacked weights) rather than the loop
    batch_size: int = 32  # inputs per batched TTT call
    request_images: int = 16  # images per request for the per-request methods (normstat, tent_episodic)


def check_methods(model: TTTClassifier, methods: tuple[str, ...]) -> None:
    """Refuse unknown methods and methods the model cannot run, saying what to do."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ConfigError(f"unknown evaluate method(s) {unknown}; known: {list(METHODS)}")
    if any(m.startswith("ttt_mae") for m in methods):
        require_decoder(model)
    if any(m.startswith("rotation") for m in methods) and model.rot_head is None:
        raise ModelError(
            "rotation TTT needs a rotation head: re-run `tessera adapt` with"
            " `adapt.rotation_head: true`, or drop the rotation methods from `evaluate.methods`"
        )


def run_method(
    method: str, model: TTTClassifier, images: torch.Tensor, settings: MethodSettings
) -> torch.Tensor:
    """(N, C, H, W) -> (N, K) probabilities of ``method``; the model is left unchanged."""
    model.eval()
    if method == "frozen":
        return predict(model, images)
    if method == "normstat":
        return normstat_predict(model, images, settings.normstat_prior, batch_size=settings.request_images)
    if method == "tent_episodic":
        n = settings.request_images
        out = [tent_episodic(model, images[i : i + n], settings.tent) for i in range(0, len(images), n)]
        return torch.cat(out) if out else torch.empty(0, model.num_classes)
    if method == "tent":
        tent = Tent(model, settings.tent)
        try:
            return tent.run(images)
        finally:
            tent.reset()
    if method == "ttt_mae_episodic" and settings.batched and settings.ttt.adapt == "encoder":
        t = settings.ttt
        out = []
        for i in range(0, len(images), settings.batch_size):
            chunk = images[i : i + settings.batch_size]
            res = adapt_batch(
                model,
                chunk,
                steps=t.steps,
                copies=t.copies,
                lr=t.effective_lr,
                momentum=t.momentum,
                weight_decay=t.weight_decay,
                mask_ratio=t.mask_ratio,
                seed=t.seed,
                indices=list(range(i, i + len(chunk))),
                diagnostics=False,
            )
            out.append(res.probs_after)
        return torch.cat(out) if out else torch.empty(0, model.num_classes)
    if method in ("ttt_mae_episodic", "ttt_mae_online", "rotation_episodic", "rotation_online"):
        family, mode = method.rsplit("_", 1)
        base = settings.ttt if family == "ttt_mae" else settings.rotation
        cfg = dataclasses.replace(base, mode=mode)
        trainer = ttt_mae_trainer(model, cfg) if family == "ttt_mae" else rotation_trainer(model, cfg)
        try:
            probs, _ = trainer.run(images)
        finally:
            trainer.reset()
        return probs
    raise ConfigError(f"unknown evaluate method {method!r}; known: {list(METHODS)}")


def per_request(
    method: str, model: TTTClassifier, images: torch.Tensor, settings: dict[str, Any]
) -> torch.Tensor:
    """One request's probabilities under a per-request method other than TTT-MAE (``normstat``,
    ``tent_episodic``), with the settings the policy measured it with (``prior``; ``tent_steps``,
    ``tent_lr``): what the serving endpoint and ``tessera predict`` apply."""
    if method not in ("normstat", "tent_episodic"):
        raise ConfigError(f"{method!r} is not a per-request method here (normstat, tent_episodic)")
    tent = TentSettings(lr=float(settings.get("tent_lr", 1e-3)), steps=int(settings.get("tent_steps", 1)))
    chosen = MethodSettings(
        tent=tent, normstat_prior=float(settings.get("prior", 16.0)), request_images=max(len(images), 1)
    )
    return run_method(method, model, images, chosen)
