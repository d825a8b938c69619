"""MLP heads of the contrastive methods: SimCLR's projection head (Chen et al. 2020, sec. 2.1) and
BYOL's projector and predictor (Grill et al. 2020, sec. 3.3: Linear-BN-ReLU-Linear)."""

from __future__ import annotations

import torch
from torch import nn


class MLPHead(nn.Module):
    """Linear(in, hidden) -> BatchNorm -> ReLU -> Linear(hidden, out)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_dim) -> (N, out_dim)."""
        return self.net(x)
