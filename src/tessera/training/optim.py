"""AdamW with MAE's parameter groups (He et al. 2022; timm's ``param_groups_weight_decay``):
no weight decay on biases, norms, the class/mask tokens and other 1-D parameters."""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Two groups: decayed matrices/kernels, and undecayed 1-D parameters and tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue  # e.g. BYOL's EMA target
        if p.ndim <= 1 or name.endswith(".bias") or name.endswith("token"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (MAE uses betas (0.9, 0.95), weight decay 0.05)."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas)
