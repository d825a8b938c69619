"""The generator endpoint over HTTP: seeded samples (JSON and PNG grid), samples like an image, inpainting."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from PIL import Image
from serving_helpers import as_tensor, b64, generator_checkpoint, png

from serving import management, package
from tessera import checkpoint
from tessera.models.registry import from_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NAME = "tessera-generator"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def gen(ts, ckpts, tmp_path_factory):
    path = generator_checkpoint(tmp_path_factory.mktemp("gen") / "generator.pt")
    mar = package.package(
        path, NAME, 1, ts.model_store, package.Config(generator_max_samples=8), inpaint_model=ckpts["encoder"]
    )
    management.register(ts, mar)
    return from_checkpoint(checkpoint.load(path)).eval()


def test_serving_generator_seeded_samples(ts, gen) -> None:
    r = management.predict(ts, NAME, json.dumps({"n": 3, "seed": 4}).encode(), JSON)
    assert r.status_code == 200, r.text
    ans = r.json()
    assert ans["mode"] == "sample" and ans["n"] == 3 and ans["model_version"] == "1"
    got = torch.stack([as_tensor(base64.b64decode(s)) for s in ans["images"]])
    want = gen.sample(3, seed=4)
    assert (got - want).abs().max() <= 1 / 255 + 1e-6  # PNG quantisation only
    grid = management.predict(ts, NAME, json.dumps({"n": 4, "format": "png"}).encode(), JSON)
    assert grid.headers["Content-Type"].startswith("image/png")
    assert grid.headers["X-Tessera-model-version"] == "1"
    assert Image.open(io.BytesIO(grid.content)).size[0] > 32 * 4


def test_serving_generator_like_image_inpaint_and_caps(ts, gen) -> None:
    like = management.predict(ts, NAME, json.dumps({"image": b64(png(1)), "n": 2}).encode(), JSON)
    assert like.status_code == 200 and like.json()["mode"] == "samples_like"
    body = {"image": b64(png(2)), "box": [8, 8, 16, 16]}
    inp = management.predict(ts, NAME, json.dumps(body).encode(), JSON)
    assert inp.status_code == 200, inp.text
    out = as_tensor(base64.b64decode(inp.json()["images"][0]))
    src = as_tensor(png(2))
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[8:16, 8:16] = False
    assert torch.equal(out[:, outside], src[:, outside])  # visible pixels untouched
    for bad in (
        {"n": 9},
        {"n": 0},
        {"format": "gif"},
        {"image": b64(png(2)), "box": [0, 0, 99]},
        {"box": [0, 0, 8, 8]},
    ):
        r = management.predict(ts, NAME, json.dumps(bad).encode(), JSON)
        assert 400 <= r.status_code < 500, (bad, r.text)
