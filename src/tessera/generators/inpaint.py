"""MAE inpainting and outpainting without fine-tuning (He et al., "Masked Autoencoders Are Scalable
Vision Learners", CVPR 2022).

A region (a box, a mask image, or everything outside a centre crop) becomes a patch-level mask: every
patch the region touches is hidden from the encoder; the encoder sees the remaining patches (the
``ids_keep`` path of MAE's masking, chosen instead of sampled), the decoder predicts every patch, and
the prediction is pasted into the region's pixels only, so every visible pixel is returned
bit-identical. The MAE must reconstruct raw pixels (``norm_pix_loss`` off): per-patch normalised
targets have lost each patch's mean and scale and cannot be turned back into pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tessera.errors import DataError, ModelError
from tessera.models.embed import encoder_of
from tessera.models.mae import MaskedAutoencoderViT


def region_mask(
    height: int,
    width: int,
    *,
    box: Sequence[int] | None = None,
    mask: torch.Tensor | np.ndarray | None = None,
    outpaint: float | None = None,
) -> torch.Tensor:
    """The pixels to fill, (H, W) bool (True = fill). Give exactly one of ``box``, ``mask``, ``outpaint``.

    Args:
        box: ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive.
        mask: (h, w) array; values > 0.5 (or > 127 for uint8) are filled; resized (nearest) to (H, W).
        outpaint: side fraction in (0, 1) of the centred crop that is kept; everything outside is filled.
    """
    if sum(a is not None for a in (box, mask, outpaint)) != 1:
        raise DataError("give exactly one region: a box, a mask image, or outpaint (a centre-crop fraction)")
    region = torch.zeros(height, width, dtype=torch.bool)
    if box is not None:
        if len(box) != 4:
            raise DataError(f"a box is x0,y0,x1,y1 (four integers), got {list(box)}")
        x0, y0, x1, y1 = (int(v) for v in box)
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise DataError(
                f"box {x0},{y0},{x1},{y1} is empty or outside the {width}x{height} image "
                "(need 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height)"
            )
        region[y0:y1, x0:x1] = True
    elif mask is not None:
        m = torch.as_tensor(np.array(mask))
        if m.dim() == 3:  # (h, w, c) image: any channel set
            m = m.amax(dim=-1)
        if m.dim() != 2:
            raise DataError(f"a mask must be a 2-D image, got shape {tuple(m.shape)}")
        m = (m > 127) if m.dtype == torch.uint8 else (m.float() > 0.5)
        region = F.interpolate(m[None, None].float(), size=(height, width), mode="nearest")[0, 0] > 0.5
    else:
        frac = float(outpaint)  # type: ignore[arg-type]
        if not 0.0 < frac < 1.0:
            raise DataError(f"outpaint keeps a centre crop of side fraction in (0, 1), got {frac}")
        ch, cw = max(1, round(height * frac)), max(1, round(width * frac))
        top, left = (height - ch) // 2, (width - cw) // 2
        region[:] = True
        region[top : top + ch, left : left + cw] = False
    if not region.any():
        raise DataError("the region is empty: nothing to fill")
    return region


def patch_mask(region: torch.Tensor, grid: int) -> torch.Tensor:
    """(H, W) bool pixels -> (grid * grid,) bool patches, True where the region touches the patch."""
    touched = F.adaptive_max_pool2d(region[None, None].float(), (grid, grid))  # (1, 1, g, g)
    return touched.flatten() > 0


def check_raw_pixels(mae: nn.Module) -> None:
    """Refuse models that cannot paint pixels: no MAE decoder, or trained with ``norm_pix_loss``."""
    if not all(hasattr(mae, a) for a in ("forward_decoder", "unpatchify", "encoder", "norm_pix_loss")):
        raise ModelError(f"inpainting needs an MAE (encoder + decoder); got a {type(mae).__name__}")
    if mae.norm_pix_loss:
        raise ModelError(
            "this MAE was trained with norm_pix_loss: its predictions are per-patch normalised and cannot "
            "be turned back into pixels; inpaint with an MAE trained on raw pixels (norm_pix_loss: false)"
        )


@torch.no_grad()
def inpaint(mae: nn.Module, image: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Fill ``region`` of ``image`` with the MAE decoder's prediction; every other pixel is unchanged.

    Args:
        mae: a ``MaskedAutoencoderViT`` trained on raw pixels.
        image: (3, H, W) or (N, 3, H, W) in [0, 1], any size (resized for the model, then the
            prediction is resized back; visible pixels are copied from ``image``).
        region: (H, W) bool, True = fill (see :func:`region_mask`).

    Returns:
        the image(s) with the region filled, same shape and dtype as ``image``.
    """
    check_raw_pixels(mae)
    model = cast(MaskedAutoencoderViT, mae)
    single = image.dim() == 3
    x = image.unsqueeze(0) if single else image  # (N, 3, H, W)
    if x.dim() != 4 or x.shape[1] != 3:
        raise DataError(f"expected RGB images (3, H, W) or (N, 3, H, W), got {tuple(image.shape)}")
    if region.shape != x.shape[-2:]:
        raise DataError(f"region is {tuple(region.shape)} but the image is {tuple(x.shape[-2:])}")
    enc = encoder_of(model)
    pm = patch_mask(region.bool(), enc.grid_size)  # (L,)
    if pm.all():
        raise ModelError(
            "the region covers every patch of the image: nothing stays visible to condition on; "
            "choose a smaller box or mask, or a larger centre crop"
        )
    if not region.any():
        raise DataError("the region is empty: nothing to fill")
    was_training = mae.training
    mae.eval()
    device = next(mae.parameters()).device
    s = enc.img_size
    xs = (
        F.interpolate(x.float(), size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        if x.shape[-2:] != (s, s)
        else x.float()
    )
    b = x.shape[0]
    ids_keep = torch.nonzero(~pm).flatten()  # (K,)
    ids_shuffle = torch.cat([ids_keep, torch.nonzero(pm).flatten()]).to(device)  # (L,) visible first
    ids_restore = torch.argsort(ids_shuffle).unsqueeze(0).expand(b, -1)  # (N, L)
    tokens = enc.tokens(xs.to(device))[:, ids_keep.to(device), :]  # (N, K, D)
    pred = model.forward_decoder(enc.encode_tokens(tokens), ids_restore)  # (N, L, p*p*3)
    filled = model.unpatchify(pred).clamp(0.0, 1.0).cpu()  # (N, 3, s, s)
    if filled.shape[-2:] != x.shape[-2:]:
        filled = F.interpolate(filled, size=x.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)
    mae.train(was_training)
    out = torch.where(region.to(x.device)[None, None], filled.to(x.dtype).to(x.device), x)
    return out[0] if single else out
