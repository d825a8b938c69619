"""Handler logic without a server: the encoder's float32 answers read back exactly; CPU threads per worker."""

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


def test_serving_cpu_workers_split_the_cores_unless_told() -> None:
    """Workers share the cores by tessera.threads' rule (unit-tested with mocked machines in
    tests/test_threads.py); ``torch_threads`` in the archive overrides it."""
    from serving import package
    from serving.handlers.base import worker_threads
    from tessera import threads

    cores = threads.available_cores()
    assert 1 <= worker_threads({}, {"maxWorkers": 1}) <= max(1, cores)
    assert worker_threads({}, {"minWorkers": 2, "maxWorkers": 2}) <= max(1, cores // 2)
    assert worker_threads({}, {"maxWorkers": 4 * max(1, cores)}) == 1
    assert worker_threads({"torch_threads": 3}, {"maxWorkers": 2}) == 3
    tuned = package.model_config(package.Config(min_workers=2, max_workers=2, torch_threads=1), "encoder")
    assert tuned["handler"]["torch_threads"] == 1 and tuned["maxWorkers"] == 2
    assert "torch_threads" not in package.model_config(package.Config(), "encoder")["handler"]


def test_serving_demo_reports_the_same_mask_losses_when_the_answer_has_them() -> None:
    from cli.serve_demo import _loss_text

    episodic = {"per_step": [0.2, 0.19], "before": 0.2012, "after": 0.1897}
    assert _loss_text(episodic) == "MAE loss on the same masks 0.2012 -> 0.1897"
    online = {"per_step": [0.2, 0.19], "before": None, "after": None}
    assert _loss_text(online) == "MAE loss at each step (fresh masks each step) [0.2, 0.19]"
