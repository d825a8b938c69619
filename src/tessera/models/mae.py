"""Masked autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022).

Per-sample random masking by sorting uniform noise; the encoder sees only the visible patches and
the class token; a light decoder appends mask tokens, unshuffles them into place and predicts the
pixels of every patch; the loss is the mean squared error on the masked patches only, optionally
against per-patch normalised targets (``norm_pix_loss``).
"""

from __future__ import annotations

import torch
from torch import nn

from tessera.models.pos_embed import sincos_2d
from tessera.models.vit import ViTEncoder, make_blocks


class MaskedAutoencoderViT(nn.Module):
    """MAE with a ViT encoder (``self.encoder``) and a light transformer decoder."""

    decoder_pos_embed: torch.Tensor  # (1, 1 + L, Dd) fixed buffer

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        decoder_embed_dim: int = 128,
        decoder_depth: int = 2,
        decoder_num_heads: int = 4,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
        mask_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        self.encoder = ViTEncoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio)
        self.norm_pix_loss = norm_pix_loss
        self.mask_ratio = mask_ratio
        self.patch_size, self.in_chans = patch_size, in_chans
        num_patches, grid = self.encoder.num_patches, self.encoder.grid_size
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer(
            "decoder_pos_embed", sincos_2d(decoder_embed_dim, grid).unsqueeze(0), persistent=False
        )
        self.decoder_blocks = make_blocks(decoder_embed_dim, decoder_num_heads, mlp_ratio, decoder_depth)
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self.num_patches = num_patches
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- patches ---------------------------------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C)."""
        p, c = self.patch_size, self.in_chans
        b, _, h, w = imgs.shape
        x = imgs.reshape(b, c, h // p, p, w // p, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*C) -> (B, C, H, W)."""
        p, c = self.patch_size, self.in_chans
        g = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], g, g, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, g * p, g * p)

    # -- masking ---------------------------------------------------------------------------
    @staticmethod
    def random_masking(
        x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep ``int(L * (1 - mask_ratio))`` patches per sample, chosen by sorting uniform noise.

        Returns ``x_visible (B, K, D)``, ``mask (B, L)`` (1 = masked, in the original order),
        ``ids_restore (B, L)`` (argsort of the shuffle) and ``ids_keep (B, K)``.
        """
        b, n, d = x.shape
        len_keep = int(n * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(b, n, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        mask = torch.ones(b, n, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_visible, mask, ids_restore, ids_keep

    # -- encoder / decoder -----------------------------------------------------------------
    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode only the visible patches: -> ``latent (B, 1+K, D)``, ``mask``, ``ids_restore``."""
        x = self.encoder.tokens(imgs)  # (B, L, D)
        x, mask, ids_restore, _ = self.random_masking(x, mask_ratio, noise)
        return self.encoder.encode_tokens(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Append mask tokens, unshuffle, decode: -> ``pred (B, L, p*p*C)``."""
        x = self.decoder_embed(latent)  # (B, 1+K, Dd)
        b, k1, d = x.shape
        n_mask = ids_restore.shape[1] + 1 - k1
        x_ = torch.cat([x[:, 1:, :], self.mask_token.expand(b, n_mask, -1)], dim=1)  # (B, L, Dd)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """The reconstruction target per patch: raw pixels or per-patch normalised pixels."""
        t = self.patchify(imgs)
        if self.norm_pix_loss:
            mean, var = t.mean(dim=-1, keepdim=True), t.var(dim=-1, keepdim=True)
            t = (t - mean) / (var + 1.0e-6) ** 0.5
        return t

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-sample mean squared error over masked patches only: -> (B,)."""
        per_patch = ((pred - self.target(imgs)) ** 2).mean(dim=-1)  # (B, L)
        return (per_patch * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> ``loss`` (scalar, mean over the batch), ``pred (B, L, p*p*C)``, ``mask (B, L)``."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask).mean(), pred, mask
