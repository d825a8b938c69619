"""Helpers of the adaptation tests: tiny digit folders, a corrupted set, a briefly trained micro MAE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tessera.models import registry

MAE_ARCH = "mae_vit_micro_patch4"


def digits_32(per_class: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits rendered to 32x32 RGB uint8: (N, 32, 32, 3), labels (N,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    xs, ys = [], []
    for c in range(10):
        idx = np.flatnonzero(d.target == c)[offset : offset + per_class]
        xs.append(d.images[idx])
        ys.append(np.full(len(idx), c))
    x = np.concatenate(xs) / 16.0  # (N, 8, 8) in [0, 1]
    x = np.kron(x, np.ones((4, 4)))  # (N, 32, 32), nearest upscale
    rgb = np.stack([x, 0.5 * x + 0.25 * (1 - x), 1 - x], axis=-1)  # a coloured rendering
    return (rgb * 255).round().astype(np.uint8), np.concatenate(ys)


def write_split(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        d = root / f"digit_{y}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:05d}.png")


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Two simple corruptions for tests: additive Gaussian noise and contrast loss."""
    x = images.astype(np.float64) / 255.0
    if name == "gaussian_noise":
        x = x + np.random.default_rng(seed).normal(0, 0.08 * severity, x.shape)
    else:
        x = (x - x.mean(axis=(1, 2, 3), keepdims=True)) * (1 - 0.25 * severity) + x.mean(
            axis=(1, 2, 3), keepdims=True
        )
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def write_dataset(root: Path) -> tuple[Path, Path]:
    """data/digits/{train,val,test} and data/digits-c/<corruption>/<severity>/ under ``root``."""
    data, cdata = root / "digits", root / "digits-c"
    for split, (n, off) in {"train": (40, 0), "val": (8, 40), "test": (10, 48)}.items():
        x, y = digits_32(n, off)
        write_split(data / split, x, y)
        if split == "test":
            for name in ("gaussian_noise", "contrast"):
                for sev in (1, 3):
                    write_split(cdata / name / str(sev), corrupt(x, name, sev), y)
    return data, cdata


def as_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def train_mae(images: torch.Tensor, steps: int = 60, seed: int = 0) -> torch.nn.Module:
    """A micro MAE trained for ``steps`` AdamW steps (a few seconds on a CPU)."""
    torch.manual_seed(seed)
    mae = registry.build(MAE_ARCH)
    opt = torch.optim.AdamW(mae.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (32,), generator=gen)
        loss, _, _ = mae(images[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mae.eval()
