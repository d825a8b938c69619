"""Normalisation-statistics adaptation (Schneider et al., "Improving robustness against common
corruptions by covariate shift adaptation", NeurIPS 2020).

BatchNorm statistics estimated on the training data are replaced by a mix of those and the
statistics of the test batch: ``mu = (N * mu_train + n * mu_test) / (N + n)`` (and likewise the
variance), with ``N`` the prior strength and ``n`` the test batch size; ``N = 0`` uses the test
statistics alone. What it applies to in Tessera: ViT encoders normalise with LayerNorm, whose
statistics are per token and need no adaptation, so the only BatchNorm is the linear-probe head's
affine-free BatchNorm; that is the layer adapted here. A model without BatchNorm gets the frozen
predictions (:func:`has_batchnorm` says which).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tessera.adapt.heads import TTTClassifier
from tessera.models.embed import embed


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds a BatchNorm layer with running statistics."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules()
    )


@torch.no_grad()
def normstat_predict(
    model: TTTClassifier, images: torch.Tensor, prior_strength: float = 16.0, batch_size: int = 64
) -> torch.Tensor:
    """(N, C, H, W) -> (N, K) probabilities with the head's BatchNorm statistics adapted per batch.

    The model itself is not modified.
    """
    bn = getattr(model.head, "bn", None)  # the linear probe's; a ViT probe has no BatchNorm
    if bn is None or bn.running_mean is None or bn.running_var is None:
        return torch.cat(
            [model.eval()(images[i : i + batch_size]).softmax(1) for i in range(0, len(images), batch_size)]
        )
    out = []
    for i in range(0, len(images), batch_size):
        feats = embed(model, images[i : i + batch_size])  # (n, D)
        n = feats.shape[0]
        w = n / (n + prior_strength)
        mean = (1 - w) * bn.running_mean + w * feats.mean(dim=0)  # (D,)
        var = (1 - w) * bn.running_var + w * feats.var(dim=0, unbiased=False)  # (D,)
        normed = (feats - mean) / torch.sqrt(var + bn.eps)  # (n, D)
        fc: Any = model.head.fc  # the linear probe's classifier
        out.append(fc(normed).softmax(dim=1))
    return torch.cat(out) if out else torch.empty(0, model.num_classes)
