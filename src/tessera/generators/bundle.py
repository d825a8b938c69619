"""The deployable IC-GAN bundle: generator (EMA weights) + its frozen encoder + the training embeddings.

Registered in the model registry as ``icgan`` (Casanova et al., "Instance-Conditioned GAN", 2021), so
``tessera.models.registry.from_checkpoint(ckpt)`` rebuilds it from a ``generator.pt`` alone: the
checkpoint's ``config`` names the encoder's architecture and keyword arguments, the generator's
keyword arguments and the size of the bank; ``model`` holds all three parts' tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tessera.errors import ModelError
from tessera.generators import sampling
from tessera.generators.icgan import Generator
from tessera.models import registry
from tessera.models.embed import embed, encoder_of

ARCH = "icgan"


def check_embedding_size(h_dim: int, encoder: nn.Module) -> None:
    """Raise :class:`ModelError` when ``encoder``'s embedding size is not the generator's ``h_dim``."""
    d = encoder_of(encoder).embed_dim
    if d != h_dim:
        raise ModelError(
            f"the encoder's embeddings have {d} features but the generator is conditioned on {h_dim}: "
            "use the encoder the generator was trained with, or retrain the generator on this encoder"
        )


class ICGAN(nn.Module):
    """Generator + encoder + bank; ``sample(n, seed)`` and ``samples_like(image, n, seed)``."""

    bank: torch.Tensor  # (N, D) embeddings of the training images (a buffer)

    def __init__(
        self,
        generator: dict[str, Any],
        encoder_arch: str,
        encoder_config: dict[str, Any],
        bank_size: int,
    ) -> None:
        super().__init__()
        self.generator_config = dict(generator)
        self.encoder_arch, self.encoder_config = encoder_arch, dict(encoder_config)
        self.generator = Generator(**generator)
        self.encoder = encoder_of(registry.build(encoder_arch, **encoder_config))
        check_embedding_size(self.generator.h_dim, self.encoder)
        self.register_buffer("bank", torch.zeros(bank_size, self.generator.h_dim))  # (N, D)
        self.eval()

    @classmethod
    def from_parts(
        cls,
        generator: Generator,
        encoder: nn.Module,
        encoder_arch: str,
        encoder_config: dict[str, Any],
        bank: torch.Tensor,
    ) -> ICGAN:
        """Assemble a bundle from trained parts (weights are copied)."""
        check_embedding_size(generator.h_dim, encoder)
        if bank.dim() != 2 or bank.shape[1] != generator.h_dim:
            raise ModelError(f"bank must be (N, {generator.h_dim}), got {tuple(bank.shape)}")
        cfg = {
            "h_dim": generator.h_dim,
            "img_size": generator.img_size,
            "z_dim": generator.z_dim,
            "ch": generator.ch,
            "cond_dim": generator.h_proj.out_features,
        }
        model = cls(cfg, encoder_arch, encoder_config, bank.shape[0])
        model.generator.load_state_dict(generator.state_dict())
        model.encoder.load_state_dict(encoder_of(encoder).state_dict())
        model.bank.copy_(bank)
        return model.eval()

    def config(self) -> dict[str, Any]:
        """The factory keyword arguments (the checkpoint's ``config``)."""
        return {
            "generator": dict(self.generator_config),
            "encoder_arch": self.encoder_arch,
            "encoder_config": dict(self.encoder_config),
            "bank_size": int(self.bank.shape[0]),
        }

    @property
    def img_size(self) -> int:
        return int(self.generator.img_size)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, D) with the bundled encoder (resized to its input size)."""
        return embed(self.encoder, sampling.resize_to(images, self.encoder.img_size))

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """G(z, h): (B, z_dim), (B, D) -> (B, 3, S, S) in [0, 1]."""
        return self.generator(z, h)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` images conditioned on random training instances; see :func:`sampling.sample`."""
        return sampling.sample(self, n, seed)

    def samples_like(self, image: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` images around ``image``; see :func:`sampling.samples_like`."""
        return sampling.samples_like(self, image, n, seed)


def _register() -> None:
    if ARCH not in registry._REGISTRY:
        registry.register(ARCH, ICGAN)


_register()
