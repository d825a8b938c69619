"""TorchServe handler: images -> embeddings (the library's one ``embed``: mean-pooled MAE tokens).

He et al., "Masked Autoencoders Are Scalable Vision Learners" (CVPR 2022) for the encoder; the
embedding is ``tessera.models.embed.embed``, the same one kNN and the generator use. All images of a
TorchServe batch (several requests, several images each) go through the encoder in one call.
"""

from __future__ import annotations

import torch

from serving.handlers.base import Item, TesseraHandler
from tessera.models.embed import embed


class EncoderHandler(TesseraHandler):
    """``{"embeddings": [[float, ...], ...], "dim": D}`` for the images of each request."""

    def predict(self, items: list[Item]) -> list[dict]:
        x = torch.cat([it.images for it in items]).to(self.device)  # (N, 3, S, S)
        with torch.inference_mode():
            z = embed(self.model, x)  # (N, D)
        out, start = [], 0
        for it in items:
            k = it.images.shape[0]
            out.append({"embeddings": z[start : start + k].tolist(), "dim": int(z.shape[1])})
            start += k
        return out
