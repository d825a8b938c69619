"""TENT: fully test-time adaptation by entropy minimisation (Wang et al., ICLR 2021).

Only the affine parameters of the normalisation layers are updated, to minimise the entropy of the
model's predictions on each test batch; everything else stays frozen. In a ViT the normalisation
layers are LayerNorms (their statistics are per token, so only the affine part adapts); the
classifier's affine-free BatchNorm has no parameters to update, but, as the reference configures
BatchNorm (``tent.configure_model``: training mode, no running statistics), it normalises with the
test batch's statistics when ``batch_stats`` is on (the running statistics stay untouched). As in the
reference, the predictions returned for a batch are those of the forward pass that computes the
batch's last update, and the adaptation carries on along the stream of batches until
:meth:`Tent.reset`.

:func:`tent_episodic` is the per-request variant serving can apply (no state across requests): the
weights are reset for every request, adapted ``steps`` times on the request's images, and the
request is answered by the adapted weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from tessera.adapt.heads import TTTClassifier
from tessera.adapt.test_time import only_trainable

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class TentSettings:
    """TENT's optimisation (the reference: SGD, momentum 0.9, one step per batch)."""

    lr: float = 1e-3  # SGD learning rate
    momentum: float = 0.9  # SGD momentum
    steps: int = 1  # updates per test batch
    batch_size: int = 64  # test images per batch
    batch_stats: bool = True  # BatchNorm layers normalise with the test batch's statistics


def norm_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The affine parameters (weight, bias) of every normalisation layer of ``model``, by name."""
    out = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, NORM_TYPES):
            for p_name, p in mod.named_parameters(recurse=False):
                out[f"{mod_name}.{p_name}" if mod_name else p_name] = p
    return out


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """(B, K) logits -> (B,) Shannon entropy of the softmax."""
    return -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1)


@contextmanager
def batch_statistics(model: nn.Module, on: bool = True) -> Iterator[None]:
    """Inside: every BatchNorm of ``model`` normalises with its input batch's statistics (training
    mode, momentum 0, so its running statistics stay as they were); outside: as before."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if on else []
    saved = [(m.training, m.momentum, getattr(m, "num_batches_tracked", None)) for m in bns]
    saved = [(t, mom, None if n is None else n.clone()) for t, mom, n in saved]
    try:
        for m in bns:
            m.train()
            m.momentum = 0.0
        yield
    finally:
        for m, (training, momentum, tracked) in zip(bns, saved, strict=True):
            m.train(training)
            m.momentum = momentum
            if tracked is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(tracked)  # counted in training mode: put back


class Tent:
    """Entropy minimisation on the normalisation layers' affine parameters of the encoder."""

    def __init__(self, model: TTTClassifier, settings: TentSettings) -> None:
        self.model, self.settings = model, settings
        self.params = list(norm_parameters(model.encoder).values())
        self.optimizer = torch.optim.SGD(self.params, lr=settings.lr, momentum=settings.momentum)
        self._weights0 = [p.detach().clone() for p in self.params]
        self._opt_state0 = copy.deepcopy(self.optimizer.state_dict())

    def reset(self) -> None:
        """Restore the initial affine parameters and optimizer state."""
        with torch.no_grad():
            for p, p0 in zip(self.params, self._weights0, strict=True):
                p.copy_(p0)
        self.optimizer.load_state_dict(copy.deepcopy(self._opt_state0))

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, K) probabilities; updates the affine parameters ``steps`` times."""
        self.model.eval()
        probs = torch.empty(0)
        for _ in range(max(self.settings.steps, 1)):
            with (
                torch.enable_grad(),
                only_trainable(self.model, self.params),
                batch_statistics(self.model, self.settings.batch_stats and len(x) > 1),
            ):
                logits = self.model(x)  # (B, K)
                probs = logits.detach().softmax(dim=1)
                if self.settings.steps == 0:
                    break
                loss = entropy(logits).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
            self.optimizer.step()
        return probs

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """Adapt along ``images`` (N, C, H, W) batch by batch: -> (N, K) probabilities."""
        bs = self.settings.batch_size
        out = [self.forward_and_adapt(images[i : i + bs]) for i in range(0, len(images), bs)]
        return torch.cat(out) if out else torch.empty(0, self.model.num_classes)


def tent_episodic(model: TTTClassifier, images: torch.Tensor, settings: TentSettings) -> torch.Tensor:
    """One request's TENT: ``settings.steps`` updates on ``images`` (N, C, H, W) from the source
    weights, then -> (N, K) probabilities of the adapted weights; the model is left as it was."""
    tent = Tent(model, settings)
    try:
        if settings.steps > 0:
            tent.forward_and_adapt(images)
        model.eval()
        with torch.no_grad(), batch_statistics(model, settings.batch_stats and len(images) > 1):
            return model(images).softmax(dim=1)
    finally:
        tent.reset()
