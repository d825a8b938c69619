"""Models: the ViT encoder, MAE, contrastive/siamese methods, and the registry of named factories."""

from tessera.models.byol import BYOL
from tessera.models.embed import embed, encoder_of
from tessera.models.mae import MaskedAutoencoderViT
from tessera.models.registry import build, config_of, from_checkpoint, names, register
from tessera.models.simclr import SimCLR
from tessera.models.vit import ViTEncoder

__all__ = [
    "BYOL",
    "MaskedAutoencoderViT",
    "SimCLR",
    "ViTEncoder",
    "build",
    "config_of",
    "embed",
    "encoder_of",
    "from_checkpoint",
    "names",
    "register",
]
