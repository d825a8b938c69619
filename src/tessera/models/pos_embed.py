"""Fixed 2-D sine-cosine position embeddings (Vaswani et al. 2017; as used by MAE, He et al. 2022)."""

from __future__ import annotations

import numpy as np
import torch


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, dim) embedding; half sines, half cosines."""
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)  # (M, dim/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """(1 + grid_size**2, dim) embedding (a zero row first for the class token), as a float tensor."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    gh, gw = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")
    emb = np.concatenate([sincos_1d(dim // 2, gw), sincos_1d(dim // 2, gh)], axis=1)  # (L, dim)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return torch.from_numpy(emb).float()
