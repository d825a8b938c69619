"""What differs between the pretraining methods inside the shared loop: the views a sample yields,
its augmentation and its loss call (MAE, He et al. 2022; SimCLR, Chen et al. 2020; BYOL, Grill et
al. 2020)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tessera.augment import ViewDataset, contrastive_transform, mae_transform
from tessera.training.loop import LossFn


def _mae_loss(model: nn.Module, imgs: torch.Tensor) -> torch.Tensor:
    return model(imgs)[0]


def _two_view_loss(model: nn.Module, views: Any) -> torch.Tensor:
    x1, x2 = views
    return model(x1, x2)[0]


def loss_fn_for(method: str) -> LossFn:
    """``loss_fn(model, batch)`` for ``fit``: MAE takes images, SimCLR/BYOL a pair of views."""
    return _mae_loss if method == "mae" else _two_view_loss


def dataset_for(method: str, images: torch.Tensor, augment: bool = True) -> ViewDataset:
    """The training dataset: MAE's single (optionally cropped/flipped) view, or two contrastive views."""
    size = int(images.shape[-1])
    if method == "mae":
        return ViewDataset(images, mae_transform(size) if augment else None, views=1)
    return ViewDataset(images, contrastive_transform(size), views=2)


def fit_size(images: torch.Tensor, img_size: int) -> torch.Tensor:
    """Resize (N, 3, H, W) images in [0, 1] to the model's square input size if they differ."""
    if tuple(images.shape[-2:]) == (img_size, img_size):
        return images
    out = F.interpolate(images, size=(img_size, img_size), mode="bicubic", antialias=True)
    return out.clamp_(0.0, 1.0)
