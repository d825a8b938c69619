"""Named configurations: the CPU-sized ones and the paper's (MAE ViT-B/16, ViT-L/16 at 224 px)."""

from __future__ import annotations

from tessera.models.mae import MaskedAutoencoderViT
from tessera.models.registry import register

# Tests: 32 px, patch 4, a two-block encoder. Seconds on a CPU.
register("mae_vit_micro_patch4", MaskedAutoencoderViT, img_size=32, patch_size=4, embed_dim=64,
         depth=2, num_heads=2, decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=2)
# The CPU config: 32 px, patch 4, dim 192, depth 6 (ViT-Tiny width).
register("mae_vit_tiny_patch4", MaskedAutoencoderViT, img_size=32, patch_size=4, embed_dim=192,
         depth=6, num_heads=3, decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4)
# The paper's configs (He et al. 2022, Table/Appendix A.1): decoder 512-d, 8 blocks.
register("mae_vit_base_patch16", MaskedAutoencoderViT, img_size=224, patch_size=16, embed_dim=768,
         depth=12, num_heads=12, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
         norm_pix_loss=True)
register("mae_vit_large_patch16", MaskedAutoencoderViT, img_size=224, patch_size=16, embed_dim=1024,
         depth=24, num_heads=16, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
         norm_pix_loss=True)
