"""The one embedding every part of Tessera uses.

``embed(model, images)`` is the mean of the encoder's patch tokens after its final LayerNorm, with
every patch visible (mask ratio 0). Mean pooling, not the class token, because the class token of an
MAE receives no direct training signal (He et al. 2022 use pooled features for fine-tuning). kNN,
the generator's conditioning, the encoder-space Fréchet distance and the encoder endpoint all call
this function.
"""

from __future__ import annotations

import torch
from torch import nn

from tessera.models.vit import ViTEncoder


def encoder_of(model: nn.Module) -> ViTEncoder:
    """The ViT encoder inside an MAE, a contrastive model or a classifier (or the encoder itself)."""
    if isinstance(model, ViTEncoder):
        return model
    enc = getattr(model, "encoder", None)
    if isinstance(enc, ViTEncoder):
        return enc
    raise TypeError(f"{type(model).__name__} has no ViT encoder (expected an `.encoder` attribute)")


def pool_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """(B, 1 + L, D) encoder output (class token first) -> (B, D): the mean of the patch tokens."""
    return tokens[:, 1:, :].mean(dim=1)


def embed_tokens(encoder: ViTEncoder, images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, D) with gradients (for fine-tuning and test-time training)."""
    return pool_tokens(encoder(images))


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] normalised as the model expects -> (N, D) float32 embeddings."""
    encoder = encoder_of(model)
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    outs = [
        embed_tokens(encoder, images[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, images.shape[0], batch_size)
    ]
    encoder.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0, encoder.embed_dim)
