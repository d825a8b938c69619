"""Heads on a frozen encoder and the classifier that test-time training adapts.

* :class:`LinearProbe`: BatchNorm without affine parameters, then a linear layer, on the pooled
  embedding: the linear-probing head of MAE (He et al. 2022, Appendix A.2), where the affine-free
  BatchNorm normalises the features whose scale differs widely between encoders.
* :class:`ViTProbe`: a few transformer blocks (LayerNorm, no BatchNorm) on the frozen encoder's
  tokens, read at a class token of its own: TTT-MAE's "ViT probing" head (Gandelsman et al. 2022,
  models_mae_shared.py in the reference), which the paper found the best base for TTT-MAE. Unlike
  the affine-free BatchNorm of the linear probe, it does not rescale small encoder changes by the
  inverse of the training features' spread.
* :class:`RotationHead`: predicts which of the four right-angle rotations was applied, the
  self-supervised task of rotation TTT (Sun et al., "Test-Time Training with Self-Supervision for
  Generalization under Distribution Shifts", ICML 2020).
* :class:`TTTClassifier`: a registered backbone (an MAE, or any model with a ViT ``.encoder``), a
  classification head and optionally a rotation head. It is registered in the model registry as
  ``ttt_mae_classifier`` so checkpoints rebuild through :func:`tessera.models.registry.build`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tessera.models.embed import embed_tokens, encoder_of, pool_tokens
from tessera.models.registry import build, register
from tessera.models.vit import ViTEncoder, make_blocks

ARCH = "ttt_mae_classifier"
HEADS = ("linear", "vit")


class LinearProbe(nn.Module):
    """(B, D) features -> (B, K) logits through ``BatchNorm1d(affine=False)`` and ``Linear``."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)  # as MAE's linear probe
        nn.init.zeros_(self.fc.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(feats))  # (B, K)


class ViTProbe(nn.Module):
    """(B, 1 + L, D) encoder tokens -> (B, K) logits: ``depth`` ViT blocks on [own cls; patch tokens]."""

    def __init__(self, dim: int, num_classes: int, depth: int = 2, num_heads: int = 4) -> None:
        super().__init__()
        heads = num_heads if dim % num_heads == 0 else 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = make_blocks(dim, heads, 4.0, depth)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens[:, 1:, :]], dim=1)
        for block in self.blocks:
            x = block(x)  # (B, 1 + L, D)
        return self.fc(self.norm(x[:, 0]))  # (B, K)


class RotationHead(nn.Module):
    """(B, D) features -> (B, 4) logits over rotations by 0, 90, 180, 270 degrees (a small MLP)."""

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 4))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats)  # (B, 4)


class TTTClassifier(nn.Module):
    """Backbone (MAE) + linear-probe head (+ rotation head): the model TTT-MAE adapts.

    Args:
        backbone_arch: registry name of the backbone (e.g. ``mae_vit_tiny_patch4``).
        backbone_config: the backbone factory's keyword arguments (its checkpoint ``config``).
        num_classes: number of classes of the head.
        rotation_head: add a rotation-prediction head (for rotation TTT).
        head: ``linear`` (:class:`LinearProbe` on the pooled embedding) or ``vit``
            (:class:`ViTProbe` on the tokens).
        head_depth: blocks of the ViT probe.
    """

    def __init__(
        self,
        backbone_arch: str = "mae_vit_tiny_patch4",
        backbone_config: dict[str, Any] | None = None,
        num_classes: int = 10,
        rotation_head: bool = True,
        head: str = "linear",
        head_depth: int = 2,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.backbone_arch = backbone_arch
        self.backbone = build(backbone_arch, **(backbone_config or {}))
        self.num_classes = num_classes
        dim = encoder_of(self.backbone).embed_dim
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.head_kind = head
        self.head: nn.Module = (
            LinearProbe(dim, num_classes) if head == "linear" else ViTProbe(dim, num_classes, head_depth)
        )
        self.rot_head = RotationHead(dim) if rotation_head else None

    @property
    def encoder(self) -> ViTEncoder:
        """The backbone's ViT encoder (so :func:`tessera.models.embed.embed` works on this model)."""
        return encoder_of(self.backbone)

    @property
    def has_decoder(self) -> bool:
        """Whether the backbone can reconstruct masked patches (an MAE): TTT-MAE needs that."""
        return all(hasattr(self.backbone, a) for a in ("forward_encoder", "forward_decoder", "forward_loss"))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D): the shared embedding (mean of patch tokens, mask ratio 0)."""
        return embed_tokens(self.encoder, images)

    def classify_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1 + L, D) encoder output -> (B, K) class logits (the head's own input: pooled or tokens)."""
        return self.head(pool_tokens(tokens) if self.head_kind == "linear" else tokens)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, K) class logits (every patch visible)."""
        return self.classify_tokens(self.encoder(images))

    def rotation_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 4) rotation logits; needs ``rotation_head=True``."""
        if self.rot_head is None:
            from tessera.errors import ModelError

            raise ModelError(
                "this classifier has no rotation head: re-run `tessera adapt` with"
                " `adapt.rotation_head: true` to use rotation TTT"
            )
        return self.rot_head(self.features(images))


def head_parameters(model: TTTClassifier) -> list[nn.Parameter]:
    """The parameters outside the backbone (classification and rotation heads)."""
    return [p for n, p in model.named_parameters() if not n.startswith("backbone.")]


register(
    ARCH,
    TTTClassifier,
    backbone_arch="mae_vit_tiny_patch4",
    backbone_config={},
    num_classes=10,
    rotation_head=True,
    head="linear",
    head_depth=2,
)
