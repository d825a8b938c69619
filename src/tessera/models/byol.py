"""BYOL on the shared ViT encoder (Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020).

An online network (encoder, projector, predictor) predicts the projection a target network
(encoder, projector) gives of another view of the same image. The target receives no gradient; after
every optimizer step it moves towards the online weights, ``xi <- tau * xi + (1 - tau) * theta``,
with tau rising from ``base_momentum`` to 1 on a cosine schedule (:func:`momentum_at`).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from tessera.losses.byol import byol_loss
from tessera.models.embed import embed_tokens
from tessera.models.heads import MLPHead
from tessera.models.vit import ViTEncoder


def momentum_at(step: int, total_steps: int, base_momentum: float) -> float:
    """BYOL's cosine schedule: ``1 - (1 - base) * (cos(pi * step / total) + 1) / 2``."""
    progress = min(step / max(total_steps, 1), 1.0)
    return 1.0 - (1.0 - base_momentum) * (math.cos(math.pi * progress) + 1.0) / 2.0


class BYOL(nn.Module):
    """Online encoder (``self.encoder``), projector, predictor; EMA target encoder and projector."""

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        proj_hidden_dim: int = 1024,
        proj_dim: int = 256,
        pred_hidden_dim: int = 1024,
        base_momentum: float = 0.99,
    ) -> None:
        super().__init__()
        self.base_momentum = base_momentum
        self.encoder = ViTEncoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio)
        self.projector = MLPHead(embed_dim, proj_hidden_dim, proj_dim)
        self.predictor = MLPHead(proj_dim, pred_hidden_dim, proj_dim)
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in self.target_parameters():
            p.requires_grad_(False)

    def online_parameters(self) -> list[torch.Tensor]:
        """The online encoder's and projector's parameters, in the target's order."""
        return [*self.encoder.parameters(), *self.projector.parameters()]

    def target_parameters(self) -> list[torch.Tensor]:
        """The target encoder's and projector's parameters."""
        return [*self.target_encoder.parameters(), *self.target_projector.parameters()]

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """``target <- momentum * target + (1 - momentum) * online`` (parameters and BN buffers)."""
        torch._foreach_lerp_(self.target_parameters(), self.online_parameters(), 1.0 - momentum)
        for t, o in zip(self.target_projector.buffers(), self.projector.buffers(), strict=True):
            t.copy_(o)

    def _online(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(embed_tokens(self.encoder, x)))  # (N, proj_dim)

    @torch.no_grad()
    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return self.target_projector(embed_tokens(self.target_encoder, x))  # (N, proj_dim)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Two views (N, C, H, W) -> ``loss`` (symmetrised), online predictions ``p1``, ``p2``."""
        p1, p2 = self._online(x1), self._online(x2)
        z1, z2 = self._target(x1), self._target(x2)
        return byol_loss(p1, z2) + byol_loss(p2, z1), p1, p2
