"""Named configurations: the CPU-sized ones and the paper's (MAE ViT-B/16, ViT-L/16 at 224 px).

Sizes, smallest first: ``micro`` (tests, seconds), ``mini`` (the demo preset: minutes on 2 cores),
``tiny`` (the CPU config: 32 px, patch 4, dim 192, depth 6 = ViT-Tiny width), ``base``/``large``
(the paper's ViT-B/16 and ViT-L/16 at 224 px). Every method (MAE, SimCLR, BYOL) shares the encoders.
"""

from __future__ import annotations

from typing import Any

from tessera.models.byol import BYOL
from tessera.models.mae import MaskedAutoencoderViT
from tessera.models.registry import register
from tessera.models.simclr import SimCLR

ENCODERS: dict[str, dict[str, Any]] = {
    "vit_micro_patch4": dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2),
    "vit_mini_patch4": dict(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4),
    "vit_tiny_patch4": dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3),
    "vit_base_patch16": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16": dict(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16),
}

# MAE decoders: light ones for the small encoders; the paper's 512-d, 8-block one for ViT-B/L
# (He et al. 2022, Appendix A.1), which also train on per-patch normalised pixels there.
_PAPER_DECODER = dict(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, norm_pix_loss=True)
_MAE_DECODERS: dict[str, dict[str, Any]] = {
    "vit_micro_patch4": dict(decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=2),
    "vit_mini_patch4": dict(decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
    "vit_tiny_patch4": dict(decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
    "vit_base_patch16": _PAPER_DECODER,
    "vit_large_patch16": _PAPER_DECODER,
}

# Contrastive heads: small for the test-sized encoder, the papers' widths otherwise
# (SimCLR: 2048 hidden / 128 out; BYOL: 4096 hidden / 256 out), scaled down for 32 px models.
_SIMCLR_HEADS: dict[str, dict[str, Any]] = {
    "vit_micro_patch4": dict(proj_hidden_dim=64, proj_dim=32),
    "vit_mini_patch4": dict(proj_hidden_dim=512, proj_dim=128),
    "vit_tiny_patch4": dict(proj_hidden_dim=512, proj_dim=128),
    "vit_base_patch16": dict(proj_hidden_dim=2048, proj_dim=128, temperature=0.1),
}
_BYOL_HEADS: dict[str, dict[str, Any]] = {
    "vit_micro_patch4": dict(proj_hidden_dim=64, proj_dim=32, pred_hidden_dim=64),
    "vit_mini_patch4": dict(proj_hidden_dim=1024, proj_dim=256, pred_hidden_dim=1024),
    "vit_tiny_patch4": dict(proj_hidden_dim=1024, proj_dim=256, pred_hidden_dim=1024),
    "vit_base_patch16": dict(proj_hidden_dim=4096, proj_dim=256, pred_hidden_dim=4096, base_momentum=0.996),
}

for _enc, _dec in _MAE_DECODERS.items():
    register(f"mae_{_enc}", MaskedAutoencoderViT, **ENCODERS[_enc], **_dec)
for _enc, _head in _SIMCLR_HEADS.items():
    register(f"simclr_{_enc}", SimCLR, **ENCODERS[_enc], **_head)
for _enc, _head in _BYOL_HEADS.items():
    register(f"byol_{_enc}", BYOL, **ENCODERS[_enc], **_head)


def method_of(name: str) -> str:
    """The method (``mae``, ``simclr``, ``byol``) a registered name belongs to."""
    return name.split("_", 1)[0]
