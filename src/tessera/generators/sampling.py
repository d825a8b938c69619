"""Sampling from an instance-conditioned generator (Casanova et al., "Instance-Conditioned GAN", 2021).

``sample(model, n, seed)`` draws ``n`` conditioning instances uniformly from the bank of training
embeddings (IC-GAN's unconditional sampling: the mixture over all neighbourhoods);
``samples_like(model, image, n, seed)`` encodes one image with the core's ``embed`` and samples
around it. The same seed gives the same images (noise and instance choice come from one seeded
``torch.Generator``; the generator runs in eval mode, so BatchNorm uses its running statistics).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from tessera.errors import ModelError

if TYPE_CHECKING:
    from tessera.generators.bundle import ICGAN
    from tessera.generators.icgan import Generator

MAX_SAMPLES = 4096  # per call; larger requests are split by the caller


def check_n(n: int, max_n: int = MAX_SAMPLES) -> int:
    """Validate a requested number of samples."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise ModelError(f"n must be an integer, got {n!r}")
    if n <= 0:
        raise ModelError(f"n must be at least 1, got {n}")
    if n > max_n:
        raise ModelError(f"n = {n} is too large: at most {max_n} samples per call; call again in chunks")
    return n


@torch.no_grad()
def generate(generator: Generator, z: torch.Tensor, h: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """G(z, h) in eval mode, in chunks: (N, z_dim), (N, h_dim) -> (N, 3, S, S) in [0, 1] on the CPU."""
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    outs = [
        generator(z[i : i + batch_size].to(device), h[i : i + batch_size].to(device)).cpu()
        for i in range(0, z.shape[0], batch_size)
    ]
    generator.train(was_training)
    return torch.cat(outs)


def draw(
    generator: Generator, bank: torch.Tensor, n: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples conditioned on instances drawn uniformly from ``bank`` -> (images, bank indices)."""
    check_n(n)
    if bank.shape[0] == 0:
        raise ModelError("the generator has an empty bank of training embeddings; retrain it")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(bank.shape[0], (n,), generator=g)  # (n,)
    z = torch.randn(n, generator.z_dim, generator=g)  # (n, z_dim)
    return generate(generator, z, bank.cpu()[idx]), idx


def sample(model: ICGAN, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` images (n, 3, S, S) in [0, 1], conditioned on random training instances."""
    return draw(model.generator, model.bank, n, seed)[0]


def samples_like(model: ICGAN, image: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` images (n, 3, S, S) in [0, 1] around ``image`` ((3, H, W) or (1, 3, H, W) in [0, 1]).

    The image is resized to the encoder's input size if it differs, then embedded with ``embed``.
    """
    check_n(n)
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ModelError(f"expected one RGB image (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
    h = model.embed(image.float())  # (1, D)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, model.generator.z_dim, generator=g)  # (n, z_dim)
    return generate(model.generator, z, h.expand(n, -1))


def resize_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, size, size), antialiased bilinear (identity when already that size)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(
        images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    ).clamp_(0.0, 1.0)
