"""Sample grids: one row per conditioning instance, the instance itself in the first column
(the layout of IC-GAN's figures, Casanova et al. 2021)."""

from __future__ import annotations

from pathlib import Path

import torch

from tessera.viz import save_grid


def instance_grid(instances: torch.Tensor, samples: torch.Tensor, path: str | Path, scale: int = 2) -> Path:
    """Write rows ``[instance, sample_1, ..., sample_C]`` as one PNG.

    Args:
        instances: (R, 3, H, W) the conditioning images in [0, 1].
        samples: (R, C, 3, H, W) generated images, row r conditioned on instance r.
    """
    rows = torch.cat([instances.unsqueeze(1).cpu(), samples.cpu()], dim=1)  # (R, 1 + C, 3, H, W)
    return save_grid(rows.flatten(0, 1), path, nrow=samples.shape[1] + 1, scale=scale)
