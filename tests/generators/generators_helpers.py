"""Helpers of the generator tests: tiny shape images and a micro MAE (32 px, patch 4, depth 2, dim 64)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tessera.models import registry

ENCODER_ARCH = "mae_vit_micro_patch4"


def shapes(n: int, seed: int = 0) -> np.ndarray:
    """(n, 32, 32, 3) uint8: a coloured square, bar or disc per image (three classes), on dark noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    out = (rng.random((n, 32, 32, 3)) * 40).astype(np.uint8)
    for i in range(n):
        kind, cy, cx = i % 3, rng.integers(8, 24), rng.integers(8, 24)
        colour = np.array([[230, 40, 40], [40, 230, 40], [60, 60, 240]][kind], dtype=np.uint8)
        if kind == 0:
            m = (abs(yy - cy) < 6) & (abs(xx - cx) < 6)
        elif kind == 1:
            m = abs(yy - cy) < 3
        else:
            m = (yy - cy) ** 2 + (xx - cx) ** 2 < 36
        out[i][m] = colour
    return out


def write_folder(root: Path, n: int = 48, seed: int = 0) -> Path:
    """``root/train/<class>/<id>.png`` with ``n`` shape images."""
    for i, arr in enumerate(shapes(n, seed)):
        d = root / "train" / f"c{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(d / f"{i:04d}.png")
    return root


def as_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def train_mae(images: torch.Tensor, steps: int = 30, seed: int = 0, **overrides: object) -> torch.nn.Module:
    """A micro MAE trained a few steps on raw pixels (enough for embeddings to separate the shapes)."""
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is as fast, and far faster on a loaded machine
    mae = registry.build(ENCODER_ARCH, **overrides)
    opt = torch.optim.AdamW(mae.parameters(), lr=2e-3)
    for _ in range(steps):
        idx = torch.randint(images.shape[0], (32,))
        loss, _, _ = mae(images[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return mae.eval()
