"""Encoder-space Fréchet distance and kernel distance (KID), offline.

FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018) with the Inception network replaced by the
Tessera encoder's one embedding (:func:`tessera.models.embed.embed`), computed by torchmetrics'
``FrechetInceptionDistance`` / ``KernelInceptionDistance``, which take a custom ``feature`` module: no
Inception weights are downloaded. The numbers depend on the encoder and the sample counts, so they
compare runs that share both; they are NOT comparable with published (Inception) FIDs. Every result
states ``n_real`` and ``n_fake``.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from tessera.errors import DataError
from tessera.generators.sampling import resize_to
from tessera.models.embed import embed, encoder_of


class EmbedFeatures(nn.Module):
    """The torchmetrics ``feature`` module: images (N, 3, H, W) in [0, 1] -> ``embed`` (N, D).

    A 2-D input is taken as embeddings already computed, so one pass of the encoder serves FD and KID.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder_of(encoder)
        self.num_features = int(self.encoder.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images or (N, D) embeddings -> (N, D) float64-ready embeddings."""
        if x.dim() == 2:
            return x.float()
        return embed(self.encoder, resize_to(x.float(), self.encoder.img_size))


class EncoderSpaceScore:
    """FD and KID of generated images against a fixed set of real images, in encoder space.

    The real set is embedded once; :meth:`score` embeds each new fake set once and feeds both metrics.
    """

    def __init__(
        self,
        encoder: nn.Module,
        real: torch.Tensor,
        kid_subset_size: int = 100,
        kid_subsets: int = 50,
        seed: int = 0,
    ) -> None:
        if real.shape[0] < 2:
            raise DataError(f"the Fréchet distance needs at least 2 real images, got {real.shape[0]}")
        self.features = EmbedFeatures(encoder)
        self.kid_subset_size, self.seed = kid_subset_size, seed
        self.fid = FrechetInceptionDistance(feature=self.features, reset_real_features=False, normalize=True)
        with warnings.catch_warnings():  # "KID keeps every feature in memory": N x D floats here
            warnings.simplefilter("ignore", UserWarning)
            self.kid = KernelInceptionDistance(
                feature=self.features,
                reset_real_features=False,
                normalize=True,
                subsets=kid_subsets,
                subset_size=kid_subset_size,
            )
        real_emb = self.features(real)  # (N_real, D)
        self.fid.update(real_emb, real=True)
        self.kid.update(real_emb, real=True)
        self.n_real = int(real.shape[0])

    def score(self, fake: torch.Tensor) -> dict[str, float]:
        """-> ``fd``, ``kid``, ``kid_std``, ``n_real``, ``n_fake`` for images (N, 3, H, W) in [0, 1]."""
        if fake.shape[0] < 2:
            raise DataError(f"the Fréchet distance needs at least 2 generated images, got {fake.shape[0]}")
        self.fid.reset()
        self.kid.reset()
        fake_emb = self.features(fake)  # (N_fake, D)
        self.fid.update(fake_emb, real=False)
        self.kid.update(fake_emb, real=False)
        fd = float(self.fid.compute())
        self.kid.subset_size = min(self.kid_subset_size, self.n_real, int(fake.shape[0]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # KID draws its subsets from the global generator
            kid_mean, kid_std = self.kid.compute()
        return {
            "fd": max(fd, 0.0),
            "kid": float(kid_mean),
            "kid_std": float(kid_std),
            "n_real": float(self.n_real),
            "n_fake": float(fake.shape[0]),
        }


def frechet_distance(encoder: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    """Encoder-space Fréchet distance between two image sets (N, 3, H, W) in [0, 1]."""
    return EncoderSpaceScore(encoder, real).score(fake)["fd"]
