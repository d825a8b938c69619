"""BYOL's regression loss (Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020, eq. 2).

The mean squared error between the L2-normalised online prediction and target projection, which
equals ``2 - 2 * cosine_similarity``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(N, D) online predictions, (N, D) target projections (no gradient) -> scalar loss."""
    p = F.normalize(p.float(), dim=-1)
    z = F.normalize(z.float(), dim=-1)
    return (2 - 2 * (p * z).sum(dim=-1)).mean()
