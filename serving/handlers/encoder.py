"""TorchServe handler: images -> embeddings (the library's one ``embed``: mean-pooled MAE tokens).

He et al., "Masked Autoencoders Are Scalable Vision Learners" (CVPR 2022) for the encoder; the
embedding is ``tessera.models.embed.embed``, the same one kNN and the generator use. All images of a
TorchServe batch (several requests, several images each) go through the encoder in one call.

The embeddings are float32 and the answer is written by orjson (in requirements.lock): each number
is the shortest decimal that reads back as the same float32, and the whole batch takes about 0.03 ms
instead of about 0.6 ms with ``json`` (bench/RESULTS.md). Without orjson, ``json`` writes the same
float32 values at float64 length.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from serving.handlers.base import Item, TesseraHandler
from tessera.models.embed import embed

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is in requirements.lock
    orjson = None  # type: ignore[assignment]


class EncoderHandler(TesseraHandler):
    """``{"embeddings": [[float, ...], ...], "dim": D}`` for the images of each request."""

    def predict(self, items: list[Item]) -> list[dict]:
        x = torch.cat([it.images for it in items]).to(self.device)  # (N, 3, S, S)
        with torch.inference_mode():
            z = embed(self.model, x)  # (N, D)
        arr = z.numpy()  # (N, D) float32
        out, start = [], 0
        for it in items:
            k = it.images.shape[0]
            out.append({"embeddings": arr[start : start + k], "dim": int(arr.shape[1])})
            start += k
        return out

    def encode(self, answer: dict[str, Any]) -> str | bytes:
        if orjson is not None:
            return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
        emb: np.ndarray = answer["embeddings"]
        return json.dumps({**answer, "embeddings": emb.tolist()})
