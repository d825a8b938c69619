"""TorchServe handler for the encoder-tied generator and MAE inpainting.

Casanova et al., "Instance-Conditioned GAN" (NeurIPS 2021) for sampling: no image -> ``n`` samples
conditioned on random training instances (``seed`` fixes them); one image -> ``n`` samples around its
embedding. He et al., "Masked Autoencoders Are Scalable Vision Learners" (CVPR 2022) for inpainting:
an image plus a region (``box``, ``outpaint`` or a ``mask`` image) -> the region filled by the MAE
packaged beside the generator (``mae.pt`` in the archive). Answers JSON with base64 PNGs, or one PNG
grid (``"format": "png"``) with the versions in ``X-Tessera-*`` headers.
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from serving.handlers.base import Item, TesseraHandler
from serving.handlers.request import RequestError, decode_image, float_option, int_option
from tessera.errors import TesseraError


def _png(images: torch.Tensor, nrow: int, pad: int = 2) -> bytes:
    """(N, 3, H, W) in [0, 1] -> PNG bytes of a grid with ``nrow`` images per row."""
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().cpu().float().clamp(0, 1), nrow=nrow, padding=pad, pad_value=1.0)
    arr = (grid.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)  # (H', W', 3)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


class GeneratorHandler(TesseraHandler):
    """Samples (none or one image) or inpainting (one image + a region)."""

    options = ("n", "seed", "format", "box", "outpaint", "mask")
    needs_image = False

    def load_model(self, ckpt: dict[str, Any]) -> nn.Module:
        import tessera.generators  # noqa: F401  (registers the ``icgan`` bundle)

        return super().load_model(ckpt)

    def setup(self) -> None:
        from tessera import checkpoint
        from tessera.models.registry import from_checkpoint

        self.max_samples = int(self.settings.get("max_samples", 16))
        mae_path = os.path.join(self.context.system_properties["model_dir"], "mae.pt")
        self.mae = None
        if os.path.isfile(mae_path):  # the inpainting MAE, packaged with --inpaint-model
            self.mae = from_checkpoint(checkpoint.load(mae_path)).to(self.device).eval()

    def validate(self, options: dict[str, Any], item: Item) -> dict[str, Any]:
        k = item.images.shape[0]
        if k > 1:
            raise RequestError(
                413, f"{k} images: the generator takes none (samples) or one (samples like it)"
            )
        fmt = options.get("format", "json")
        if fmt not in ("json", "png"):
            raise RequestError(400, f"format must be 'json' or 'png', got {fmt!r}")
        out = {
            "n": int_option(options, "n", 8, 1, self.max_samples),
            "seed": int_option(options, "seed", 0, 0, 2**31 - 1),
            "format": fmt,
        }
        regions: list[str] = [key for key in ("box", "outpaint", "mask") if key in options]
        if regions:
            out.update(self._region(options, regions, item))
        return out

    def _region(self, options: dict[str, Any], keys: list[str], item: Item) -> dict[str, Any]:
        from tessera.generators import region_mask

        if len(keys) > 1:
            raise RequestError(400, f"give one region, not {keys}")
        if item.images.shape[0] != 1:
            raise RequestError(400, "inpainting needs an image with the region")
        if self.mae is None:
            raise RequestError(400, "this deployment has no inpainting MAE (package it with --inpaint-model)")
        s = self.img_size
        w, h = item.sizes[0]
        try:
            if keys[0] == "box":
                box = options["box"]
                if (
                    not isinstance(box, list)
                    or len(box) != 4
                    or not all(isinstance(v, int | float) for v in box)
                ):
                    raise RequestError(400, "box must be [x0, y0, x1, y1] in pixels of the image sent")
                side = min(w, h)  # the image was centre-cropped to a square, then resized to s
                left, top, k = (w - side) // 2, (h - side) // 2, s / side
                scaled = [
                    min(s, max(0, round((box[0] - left) * k))),
                    min(s, max(0, round((box[1] - top) * k))),
                    min(s, max(0, round((box[2] - left) * k))),
                    min(s, max(0, round((box[3] - top) * k))),
                ]
                region = region_mask(s, s, box=scaled)
            elif keys[0] == "outpaint":
                region = region_mask(s, s, outpaint=float_option(options, "outpaint", 0.5, 0.01, 0.99))
            else:
                raw = options["mask"]
                blob = base64.b64decode(raw, validate=True) if isinstance(raw, str) else bytes(raw)
                m, _ = decode_image(blob, s, self.max_pixels, "mask")
                region = region_mask(s, s, mask=m.mean(dim=0))
        except (TesseraError, ValueError) as e:
            raise RequestError(400, f"bad region: {e}") from e
        return {"region": region}

    def predict(self, items: list[Item]) -> list[Any]:
        from tessera.generators import inpaint

        outs: list[Any] = []
        for it in items:
            opts = it.options
            try:
                gen: Any = self.model
                if "region" in opts:
                    assert self.mae is not None  # validate() refused regions without an MAE
                    images = inpaint(self.mae, it.images[0].to(self.device), opts["region"].to(self.device))
                    images, mode = images.unsqueeze(0).cpu(), "inpaint"
                elif it.images.shape[0]:
                    images, mode = (
                        gen.samples_like(it.images[0], opts["n"], opts["seed"]),
                        "samples_like",
                    )
                else:
                    images, mode = gen.sample(opts["n"], opts["seed"]), "sample"
            except TesseraError as e:  # this request only; its batch-mates still get their answers
                outs.append(RequestError(400, str(e)))
                continue
            if opts["format"] == "png":
                outs.append((_png(images, nrow=min(8, images.shape[0])), "image/png"))
            else:
                pngs = [base64.b64encode(_png(img[None], 1, pad=0)).decode("ascii") for img in images]
                outs.append({"mode": mode, "n": len(pngs), "seed": opts["seed"], "images": pngs})
        return outs
