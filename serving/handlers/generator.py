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
from serving.handlers.request import RequestError, b64, decode_image
from serving.handlers.schema import GeneratorRequest, generator_model, scale_box
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

    def request_model(self) -> type[GeneratorRequest]:
        return generator_model(self.max_samples)

    def plan(self, req: GeneratorRequest, item: Item) -> dict[str, Any]:
        k = item.images.shape[0]
        if k > 1:
            raise RequestError(
                413, f"{k} images: the generator takes none (samples) or one (samples like it)"
            )
        out: dict[str, Any] = {"n": req.n, "seed": req.seed, "format": req.format}
        regions = req.regions()  # at most one (the model checked)
        if regions:
            out["region"] = self._region(req, regions[0], item)
        return out

    def _region(self, req: GeneratorRequest, kind: str, item: Item) -> torch.Tensor:
        from tessera.generators import region_mask

        if item.images.shape[0] != 1:
            raise RequestError(400, "inpainting needs an image with the region")
        if self.mae is None:
            raise RequestError(400, "this deployment has no inpainting MAE (package it with --inpaint-model)")
        s = self.img_size
        try:
            if kind == "box":
                assert req.box is not None
                return region_mask(s, s, box=scale_box(req.box, item.sizes[0], s))
            if kind == "outpaint":
                return region_mask(s, s, outpaint=req.outpaint)
            m, _ = decode_image(b64(req.mask, "mask"), s, self.max_pixels, "mask")
            return region_mask(s, s, mask=m.mean(dim=0))
        except (TesseraError, ValueError) as e:
            raise RequestError(400, f"bad region: {e}") from e

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
