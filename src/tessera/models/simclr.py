"""SimCLR on the shared ViT encoder (Chen et al., "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020).

Two augmented views of each image go through the encoder; the representation is the mean of the
final-norm patch tokens (the same pooling as :func:`tessera.models.embed.embed`), a projection head
maps it to the space where NT-Xent is applied.
"""

from __future__ import annotations

import torch
from torch import nn

from tessera.losses.ntxent import NTXentLoss
from tessera.models.embed import embed_tokens
from tessera.models.heads import MLPHead
from tessera.models.vit import ViTEncoder


class SimCLR(nn.Module):
    """ViT encoder (``self.encoder``) + projection head + NT-Xent."""

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        proj_hidden_dim: int = 512,
        proj_dim: int = 128,
        temperature: float = 0.5,
    ) -> None:
        super().__init__()
        self.encoder = ViTEncoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio)
        self.projector = MLPHead(embed_dim, proj_hidden_dim, proj_dim)
        self.criterion = NTXentLoss(temperature)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, proj_dim) projections."""
        return self.projector(embed_tokens(self.encoder, x))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Two views (N, C, H, W) -> ``loss`` (scalar), ``z1``, ``z2`` (N, proj_dim)."""
        z1, z2 = self.project(x1), self.project(x2)
        return self.criterion(z1, z2), z1, z2
