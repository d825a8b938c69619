"""The encoder's JSON answer, without a server: every float32 embedding reads back exactly."""

from __future__ import annotations

import json

import numpy as np

from serving.handlers.encoder import EncoderHandler


def test_serving_encoder_answer_reads_back_the_same_float32() -> None:
    rng = np.random.default_rng(0)
    emb = (rng.standard_normal((3, 64)) * np.logspace(-6, 3, 64)).astype(np.float32)
    emb[0, :3] = [0.0, -0.0, np.float32(1) / 3]
    stamp = {"model": "m", "model_version": "2", "data_version": "abc", "arch": "mae_vit_micro_patch4"}
    body = EncoderHandler().encode({**stamp, "embeddings": emb[1:], "dim": 64})
    answer = json.loads(body)
    assert {k: answer[k] for k in stamp} == stamp and answer["dim"] == 64
    got = np.asarray(answer["embeddings"], dtype=np.float32)
    assert got.shape == (2, 64)
    assert np.array_equal(got, emb[1:])
    first = json.loads(EncoderHandler().encode({"embeddings": emb[:1], "dim": 64}))["embeddings"]
    assert np.array_equal(np.asarray(first, dtype=np.float32), emb[:1])
