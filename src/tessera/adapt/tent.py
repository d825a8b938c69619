"""TENT: fully test-time adaptation by entropy minimisation (Wang et al., ICLR 2021).

Only the affine parameters of the normalisation layers are updated, to minimise the entropy of the
model's predictions on each test batch; everything else stays frozen. In a ViT the normalisation
layers are LayerNorms (their statistics are per token, so only the affine part adapts); the
classifier's affine-free BatchNorm has no parameters to update (its statistics are the business of
:mod:`tessera.adapt.normstat`). As in the reference, the predictions returned for a batch are those
of the forward pass that computes the batch's last update, and the adaptation carries on along the
stream of batches until :meth:`Tent.reset`.
"""

from __future__ import annotations

import copy
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
            with torch.enable_grad(), only_trainable(self.model, self.params):
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
