"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020,
eq. (1): for each of the 2N views, the positive is the other view of the same image and the 2N - 2
other views are the negatives; the loss is averaged over all 2N anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NTXentLoss(nn.Module):
    """NT-Xent over two batches of projections ``z1``, ``z2`` of shape (N, D).

    Args:
        temperature: the softmax temperature tau (SimCLR uses 0.1-0.5; 0.5 for CIFAR-sized runs).
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """(N, D), (N, D) -> scalar loss."""
        n = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2N, D)
        sim = z @ z.t() / self.temperature  # (2N, 2N) cosine similarities / tau
        sim.fill_diagonal_(float("-inf"))  # an anchor is never its own negative
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)  # (2N,)
        return F.cross_entropy(sim, positives)
