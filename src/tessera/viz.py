"""Image grids for reports: ``save_grid`` (any rows of images) and MAE's reconstruction picture
(original / masked / reconstruction with the visible patches pasted back, as in He et al. 2022, fig. 2)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid

from tessera.models.mae import MaskedAutoencoderViT


def save_grid(
    images: torch.Tensor | Sequence[torch.Tensor],
    path: str | Path,
    nrow: int | None = None,
    scale: int = 1,
    padding: int = 2,
) -> Path:
    """Write images in [0, 1] as one PNG.

    Args:
        images: (N, C, H, W), laid out ``nrow`` per row (default: a square-ish grid); or a sequence of
            (N, C, H, W) tensors of equal N, one per row.
        path: the PNG to write (parents created).
        scale: nearest-neighbour upscaling factor (small 32 px images are hard to see otherwise).
    """
    if isinstance(images, torch.Tensor):
        batch = images.detach().float().cpu()
        per_row = nrow or max(1, int(np.ceil(np.sqrt(batch.shape[0]))))
    else:
        rows = [r.detach().float().cpu() for r in images]
        per_row = rows[0].shape[0]
        batch = torch.cat(rows)
    if batch.shape[1] == 1:
        batch = batch.expand(-1, 3, -1, -1)
    if scale > 1:
        batch = F.interpolate(batch, scale_factor=scale, mode="nearest")
    grid = make_grid(batch.clamp(0, 1), nrow=per_row, padding=padding, pad_value=1.0)  # (3, H', W')
    array = (grid.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@torch.no_grad()
def mae_reconstruction(
    model: MaskedAutoencoderViT,
    imgs: torch.Tensor,
    mask_ratio: float | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (original, masked (masked patches grey), reconstruction with visible patches pasted back).

    With ``norm_pix_loss`` the prediction is per-patch normalised; it is mapped back to pixels with
    each patch's own mean and variance (which only a visualisation may borrow from the original).
    """
    was_training = model.training
    model.eval()
    _, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=noise)  # pred (B, L, p*p*C), mask (B, L)
    pred = pred.float()
    if model.norm_pix_loss:
        t = model.patchify(imgs)
        pred = pred * (t.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(dim=-1, keepdim=True)
    m = mask.unsqueeze(-1).expand_as(pred)  # (B, L, p*p*C), 1 = masked
    recon = model.unpatchify(pred).clamp(0, 1)
    mask_img = model.unpatchify(m.to(pred.dtype))  # (B, C, H, W)
    masked = imgs * (1 - mask_img) + 0.5 * mask_img
    pasted = imgs * (1 - mask_img) + recon * mask_img
    model.train(was_training)
    return imgs, masked, pasted


def save_mae_grid(
    model: MaskedAutoencoderViT, imgs: torch.Tensor, path: str | Path, seed: int = 0, scale: int = 2
) -> Path:
    """Three rows (original / masked / reconstruction) for ``imgs``, masked with noise from ``seed``."""
    device = next(model.parameters()).device
    imgs = imgs.to(device)
    gen = torch.Generator().manual_seed(seed)  # a private generator: training's random stream is untouched
    noise = torch.rand(imgs.shape[0], model.num_patches, generator=gen).to(device)  # (B, L)
    rows = mae_reconstruction(model, imgs, noise=noise)
    return save_grid(rows, path, scale=scale)
