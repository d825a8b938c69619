"""Generators tied to Tessera's encoders: an instance-conditioned GAN and MAE inpainting.

Importing this package registers the ``icgan`` bundle in the model registry. The FD/KID metrics
(``tessera.generators.metrics``, which imports torchmetrics) load on first use.
"""

from typing import Any

from tessera.generators.bundle import ICGAN, check_embedding_size
from tessera.generators.icgan import EMA, Discriminator, Generator, d_hinge_loss, g_hinge_loss
from tessera.generators.inpaint import inpaint, patch_mask, region_mask
from tessera.generators.neighbours import neighbourhoods
from tessera.generators.sampling import sample, samples_like

_LAZY = {"EncoderSpaceScore", "frechet_distance"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from tessera.generators import metrics

        return getattr(metrics, name)
    raise AttributeError(f"module 'tessera.generators' has no attribute {name!r}")


__all__ = [
    "EMA",
    "ICGAN",
    "Discriminator",
    "EncoderSpaceScore",
    "Generator",
    "check_embedding_size",
    "d_hinge_loss",
    "frechet_distance",
    "g_hinge_loss",
    "inpaint",
    "neighbourhoods",
    "patch_mask",
    "region_mask",
    "sample",
    "samples_like",
]
