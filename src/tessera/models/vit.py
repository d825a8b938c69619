"""A ViT encoder on timm's transformer blocks (Dosovitskiy et al. 2021), shared by MAE, SimCLR, BYOL.

It can encode every patch, or only a subset given by ``ids_keep`` (MAE's visible patches): the
class token is always prepended, and no mask tokens ever enter the encoder.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block, PatchEmbed
from torch import nn

from tessera.models.pos_embed import sincos_2d

# As in the MAE reference code: LayerNorm with eps 1e-6 in every block and after the last one.
Norm = partial(nn.LayerNorm, eps=1e-6)


def make_blocks(dim: int, num_heads: int, mlp_ratio: float, depth: int) -> nn.ModuleList:
    """``depth`` timm transformer blocks (pre-norm, qkv bias, LayerNorm eps 1e-6)."""
    return nn.ModuleList(
        [Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=Norm) for _ in range(depth)]  # type: ignore[arg-type]
    )


class ViTEncoder(nn.Module):
    """Patch embedding + fixed sin-cos positions + class token + ``depth`` blocks + LayerNorm."""

    pos_embed: torch.Tensor  # (1, 1 + L, D) fixed buffer

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.num_patches = self.patch_embed.num_patches
        self.grid_size = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sincos_2d(embed_dim, self.grid_size).unsqueeze(0), persistent=False)
        self.blocks = make_blocks(embed_dim, num_heads, mlp_ratio, depth)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def tokens(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, D) patch tokens with positions added (no class token)."""
        if imgs.shape[-3:] != (self.in_chans, self.img_size, self.img_size):
            raise ValueError(
                f"expected images of shape (B, {self.in_chans}, {self.img_size}, {self.img_size}),"
                f" got {tuple(imgs.shape)}"
            )
        return self.patch_embed(imgs) + self.pos_embed[:, 1:, :]

    def encode_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) positioned patch tokens -> (B, 1 + N, D): prepend class token, run blocks."""
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """Encode every patch: (B, C, H, W) -> (B, 1 + L, D)."""
        return self.encode_tokens(self.tokens(imgs))
