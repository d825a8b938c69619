"""Augmentations for self-supervised pretraining (torchvision ``transforms.v2``), per image.

- MAE (He et al. 2022, Appendix A.1): random resized crop (scale 0.2-1) and horizontal flip only.
- SimCLR (Chen et al. 2020, Appendix A) and BYOL (Grill et al. 2020, Appendix B): random resized
  crop (scale 0.08-1), flip, colour jitter (p 0.8), grayscale (p 0.2), Gaussian blur.

Images are float tensors in [0, 1], (3, H, W); every transform keeps them there. The datasets apply
the transform per image (so every image gets its own random parameters), in DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

Transform = Callable[[torch.Tensor], torch.Tensor]


def _clamp01(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0.0, 1.0)  # a named function (not a lambda) so DataLoader workers can pickle it


def mae_transform(img_size: int) -> Transform:
    """MAE's light augmentation: crop (scale 0.2-1, bicubic in the reference) and flip."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(img_size, scale=(0.2, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    )


def contrastive_transform(img_size: int, strength: float = 1.0, blur: bool = True) -> Transform:
    """SimCLR/BYOL's augmentation; ``strength`` scales the colour jitter (0.5 in SimCLR's CIFAR runs)."""
    s = strength
    ops: list[Transform] = [
        v2.RandomResizedCrop(img_size, scale=(0.08, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]
    if blur:
        # About 10% of the image side, odd, as in SimCLR's ImageNet setting.
        kernel = max(3, (img_size // 10) | 1)
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    ops.append(v2.Lambda(_clamp01))
    return v2.Compose(ops)


class ViewDataset(Dataset):
    """In-memory images (N, 3, H, W) -> one augmented view, or a pair of views for contrastive methods."""

    def __init__(self, images: torch.Tensor, transform: Transform | None = None, views: int = 1) -> None:
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {views}")
        self.images, self.transform, self.views = images, transform, views

    def __len__(self) -> int:
        return self.images.shape[0]

    def _view(self, img: torch.Tensor) -> torch.Tensor:
        return self.transform(img) if self.transform is not None else img

    def __getitem__(self, idx: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        img = self.images[idx]  # (3, H, W)
        if self.views == 1:
            return self._view(img)
        return self._view(img), self._view(img)
