"""The TTT classifier endpoint over HTTP: same answer as the library's TTT-MAE, caps, metrics."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch
from serving_helpers import DATA_VERSION, as_tensor, b64, png

from serving import management
from tessera import checkpoint

pytestmark = pytest.mark.integration
NAME = "tessera-ttt-classifier"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def ttt(ts):
    return ts


def _library(
    ckpts, data: list[bytes], steps: int, copies: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    from tessera.adapt.test_time import TTTSettings
    from tessera.adapt.ttt_mae import ttt_mae_predict
    from tessera.models.registry import from_checkpoint

    ckpt = checkpoint.load(ckpts["ttt"])
    model = from_checkpoint(ckpt).eval()
    cfg = ckpt["extra"]["ttt"]
    settings = TTTSettings(steps=steps, copies=copies, lr=cfg["lr"], mask_ratio=cfg["mask_ratio"], seed=seed)
    return ttt_mae_predict(model, torch.stack([as_tensor(d) for d in data]), settings)


def _library_batched(ckpts, data: list[bytes], steps: int, copies: int, seed: int):  # noqa: ANN202
    from tessera.adapt.batched import adapt_batch
    from tessera.models.registry import from_checkpoint

    ckpt = checkpoint.load(ckpts["ttt"])
    cfg = ckpt["extra"]["ttt"]
    return adapt_batch(
        from_checkpoint(ckpt).eval(),
        torch.stack([as_tensor(d) for d in data]),
        steps=steps,
        copies=copies,
        lr=cfg["lr"],
        mask_ratio=cfg["mask_ratio"],
        seed=seed,
    )


def test_serving_ttt_matches_library(ttt, ckpts) -> None:
    data = [png(11), png(12)]
    body = json.dumps({"images": [b64(d) for d in data], "steps": 3, "copies": 4, "seed": 7}).encode()
    r = management.predict(ttt, NAME, body, JSON)
    assert r.status_code == 200, r.text
    ans = r.json()
    assert ans["model_version"] == "1" and ans["data_version"] == DATA_VERSION["md5"]
    assert ans["classes"] == ["cat", "dog", "frog"] and ans["steps"] == 3
    probs, losses = _library(ckpts, data, steps=3, copies=4, seed=7)
    got = torch.tensor([p["probabilities"] for p in ans["predictions"]])
    got_loss = torch.tensor([p["loss"]["per_step"] for p in ans["predictions"]])
    assert torch.allclose(got, probs, atol=1e-4), (got, probs)
    assert torch.allclose(got_loss, losses, atol=1e-4)
    # the prediction without adaptation is there too, and differs from the adapted one
    before = torch.tensor([p["before"]["probabilities"] for p in ans["predictions"]])
    assert not torch.allclose(before, got)
    # and the reconstruction loss before/after on the same masks, as the library computes it
    lib = _library_batched(ckpts, data, steps=3, copies=4, seed=7)
    for p, b, a in zip(ans["predictions"], lib.recon_loss_before, lib.recon_loss_after, strict=True):
        assert p["loss"]["before"] == pytest.approx(float(b), abs=1e-4)
        assert p["loss"]["after"] == pytest.approx(float(a), abs=1e-4)


def test_serving_ttt_concurrent_requests_each_adapted_alone(ttt, ckpts) -> None:
    data = [png(20 + i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        rs = list(pool.map(lambda d: management.predict(ttt, NAME, d, {"Content-Type": "image/png"}), data))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
    got = torch.tensor([r.json()["predictions"][0]["probabilities"] for r in rs])
    # each request is image 0 of its own request: seed 0, the policy's budget (2 steps, 4 copies)
    want = torch.cat([_library(ckpts, [d], steps=2, copies=4, seed=0)[0] for d in data])
    assert torch.allclose(got, want, atol=1e-4)
    version = checkpoint.load(ckpts["ttt"])["extra"]["policy"]["version"]
    for r in rs:
        ans = r.json()
        assert (ans["method"], ans["method_source"], ans["policy_version"]) == (
            "ttt_mae_episodic",
            "policy",
            version,
        )


def test_serving_ttt_policy_none_answers_frozen_and_a_request_can_override_it(ttt, tmp_path) -> None:
    from serving_helpers import ttt_checkpoint

    from serving import package
    from tessera.models.registry import from_checkpoint

    ckpt_path = ttt_checkpoint(tmp_path / "none.pt", 2, adapt=False)  # same weights, policy none
    management.register(ttt, package.package(ckpt_path, "ttt-none", 1, ttt.model_store, package.Config()))
    data = png(41)
    r = management.predict(ttt, "ttt-none", data, {"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    ans = r.json()
    assert (ans["method"], ans["method_source"], ans["steps"]) == ("none", "policy", 0)
    assert ans["policy_version"] == checkpoint.load(ckpt_path)["extra"]["policy"]["version"]
    pred = ans["predictions"][0]
    assert pred["probabilities"] == pred["before"]["probabilities"] and pred["loss"]["per_step"] == []
    with torch.no_grad():
        frozen = from_checkpoint(checkpoint.load(ckpt_path)).eval()(as_tensor(data)[None]).softmax(1)[0]
    assert torch.allclose(torch.tensor(pred["probabilities"]), frozen, atol=1e-6)
    # an explicit method (and budget) in the request wins over the policy
    body = json.dumps({"image": b64(data), "method": "ttt_mae_episodic", "steps": 2}).encode()
    over = management.predict(ttt, "ttt-none", body, JSON).json()
    assert (over["method"], over["method_source"], over["steps"]) == ("ttt_mae_episodic", "request", 2)
    assert len(over["predictions"][0]["loss"]["per_step"]) == 2
    # the per-request methods adapt to the request's own images (a batch of 4 here)
    from tessera.adapt.evaluation import per_request

    four = [b64(png(41 + k)) for k in range(4)]
    x = torch.stack([as_tensor(base64.b64decode(v)) for v in four])
    model = from_checkpoint(checkpoint.load(ckpt_path)).eval()
    for method in ("normstat", "tent_episodic"):
        r = management.predict(ttt, "ttt-none", json.dumps({"images": four, "method": method}).encode(), JSON)
        assert r.status_code == 200, r.text
        ans = r.json()
        assert (ans["method"], ans["method_source"], ans["steps"]) == (method, "request", 0)
        want = per_request(method, model, x, ans.get("settings") or {})
        got = torch.tensor([p["probabilities"] for p in ans["predictions"]])
        assert torch.allclose(got, want, atol=1e-5), method
        before = torch.tensor([p["before"]["probabilities"] for p in ans["predictions"]])
        assert not torch.allclose(got, before)
    bad = management.predict(
        ttt, "ttt-none", json.dumps({"image": b64(data), "method": "tent"}).encode(), JSON
    )
    assert bad.status_code == 400 and "method" in bad.json()["error"]


def test_serving_ttt_steps_zero_is_no_adaptation(ttt) -> None:
    r = management.predict(ttt, NAME, json.dumps({"image": b64(png(5)), "steps": 0}).encode(), JSON)
    assert r.json()["method"] == "ttt_mae_episodic" and r.json()["method_source"] == "request"
    pred = r.json()["predictions"][0]
    assert pred["probabilities"] == pytest.approx(pred["before"]["probabilities"], abs=1e-6)
    assert pred["loss"]["last"] is None


def test_serving_ttt_caps_and_metrics(ttt) -> None:
    for opts, code in [
        ({"steps": 11}, 400),
        ({"copies": 9}, 400),
        ({"steps": -1}, 400),
        ({"steps": "many"}, 400),
        ({"copies": 0}, 400),
    ]:
        r = management.predict(ttt, NAME, json.dumps({"image": b64(png(1)), **opts}).encode(), JSON)
        assert r.status_code == code, (opts, r.text)
        assert "outside" in r.json()["error"] or "integer" in r.json()["error"]
    ok = management.predict(ttt, NAME, png(2), {"Content-Type": "image/png"})
    assert ok.status_code == 200
    text = requests.get(f"{ttt.metrics_url}/metrics", timeout=10).text
    for metric in ("TTTReconstructionLoss", "ConfidenceBeforeTTT", "ConfidenceAfterTTT"):
        assert metric in text, metric


@pytest.mark.slow
def test_serving_ttt_online_keeps_adapting_along_the_stream(ttt, ckpts) -> None:
    from serving import package
    from tessera.adapt.test_time import TTTSettings
    from tessera.adapt.ttt_mae import ttt_mae_trainer
    from tessera.models.registry import from_checkpoint

    cfg = package.Config(ttt_online=True, ttt_reset_every=0, batch_size=1)
    mar = package.package(ckpts["ttt"], "ttt-online", 1, ttt.model_store, cfg)
    management.register(ttt, mar)
    data = png(31)
    got = []
    for _ in range(2):  # the same image twice: the second answer starts from the adapted weights
        r = management.predict(ttt, "ttt-online", data, {"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        assert r.json()["mode"] == "online"
        got.append(r.json()["predictions"][0]["probabilities"])
    ckpt = checkpoint.load(ckpts["ttt"])
    d = ckpt["extra"]["ttt"]
    settings = TTTSettings(
        steps=d["steps"], copies=d["copies"], lr=d["lr"], mask_ratio=d["mask_ratio"], mode="online", seed=0
    )
    trainer = ttt_mae_trainer(from_checkpoint(ckpt).eval(), settings)
    want, _ = trainer.run(torch.stack([as_tensor(data)] * 2), 0)
    assert torch.allclose(torch.tensor(got), want, atol=1e-4)
    assert got[0] != got[1]
    r = management.predict(ttt, "ttt-online", json.dumps({"image": b64(data), "steps": 5}).encode(), JSON)
    assert r.status_code == 400


def test_serving_ttt_queue_is_bounded_so_a_burst_of_long_work_is_refused_at_once(ttt, ckpts) -> None:
    """jobQueueSize (serve.ttt_job_queue_size) bounds the requests waiting behind long adaptations:
    beyond it TorchServe answers 503 at once instead of making every later request wait."""
    import time

    from serving import package

    cfg = package.Config(batch_size=1, max_batch_delay_ms=0, ttt_job_queue_size=1)
    management.register(ttt, package.package(ckpts["ttt"], "ttt-queue", 1, ttt.model_store, cfg))
    slow = json.dumps({"image": b64(png(3)), "steps": 50, "copies": 32}).encode()

    def send(_: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        r = management.predict(ttt, "ttt-queue", slow, JSON, timeout=120)
        return r.status_code, time.perf_counter() - t0

    try:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(send, range(6)))
        codes = [c for c, _ in results]
        assert set(codes) <= {200, 503} and codes.count(200) >= 1 and 503 in codes, results
        fastest_ok = min(t for c, t in results if c == 200)
        assert max(t for c, t in results if c == 503) < fastest_ok  # refused before any work ended
        assert management.predict(ttt, "ttt-queue", png(4), {"Content-Type": "image/png"}).status_code == 200
    finally:
        management.unregister(ttt, "ttt-queue", "1")
