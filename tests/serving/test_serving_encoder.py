"""The encoder endpoint over HTTP on a real TorchServe, and the input guards of every endpoint."""

from __future__ import annotations

import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from serving_helpers import DATA_VERSION, as_tensor, b64, png

from serving import management
from tessera import checkpoint
from tessera.models.embed import embed
from tessera.models.registry import from_checkpoint

pytestmark = pytest.mark.integration


def test_serving_encoder_matches_in_process_embed(ts, ckpts) -> None:
    model = from_checkpoint(checkpoint.load(ckpts["encoder"])).eval()
    data = png(3)
    r = management.predict(ts, "tessera-encoder", data, {"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "1" and body["data_version"] == DATA_VERSION["md5"]
    got = torch.tensor(body["embeddings"])  # (1, D)
    want = embed(model, as_tensor(data)[None])
    assert got.shape == want.shape == (1, 64)
    assert torch.allclose(got, want, atol=1e-5)


def test_serving_encoder_json_batch_and_concurrent_requests(ts) -> None:
    payload = json.dumps({"images": [b64(png(1)), b64(png(2))]}).encode()
    r = management.predict(ts, "tessera-encoder", payload, {"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    two = r.json()["embeddings"]
    assert len(two) == 2 and two[0] != two[1]
    # concurrent single-image requests are batched by TorchServe; each gets its own answer
    with ThreadPoolExecutor(8) as pool:
        rs = list(
            pool.map(
                lambda s: management.predict(ts, "tessera-encoder", png(s), {"Content-Type": "image/png"}),
                [1, 2] * 4,
            )
        )
    assert all(x.status_code == 200 for x in rs)
    assert [x.json()["embeddings"][0] for x in rs[:2]] == two


def _bomb() -> bytes:
    """A valid PNG header declaring 30000 x 30000 pixels (a decompression bomb's signature)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def _malformed() -> list[tuple[str, bytes, dict[str, str]]]:
    good = png(0)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    return [
        ("text content type", b"hello", {"Content-Type": "text/plain"}),
        ("form content type", b"a=1", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("xml content type", good, {"Content-Type": "application/xml"}),
        ("not an image", b"definitely not an image", {"Content-Type": "image/png"}),
        ("truncated png", good[: len(good) // 2], {"Content-Type": "image/png"}),
        ("truncated jpeg", jpeg[:60], {"Content-Type": "image/jpeg"}),
        ("decompression bomb", _bomb(), {"Content-Type": "image/png"}),
        ("zero-size body", b"", {"Content-Type": "image/png"}),
        ("malformed json", b'{"images": [', {"Content-Type": "application/json"}),
        ("json not an object", b"[1, 2]", {"Content-Type": "application/json"}),
        ("bad base64", json.dumps({"images": ["%%%"]}).encode(), {"Content-Type": "application/json"}),
        (
            "too many images",
            json.dumps({"images": [b64(good)] * 5}).encode(),
            {"Content-Type": "application/json"},
        ),
        ("no image", json.dumps({"images": []}).encode(), {"Content-Type": "application/json"}),
        (
            "unknown option",
            json.dumps({"image": b64(good), "stepz": 3}).encode(),
            {"Content-Type": "application/json"},
        ),
    ]


@pytest.mark.slow
def test_serving_200_malformed_requests_get_4xx_and_worker_survives(ts) -> None:
    cases = _malformed()
    sent = [cases[i % len(cases)] for i in range(200)]

    def send(case: tuple[str, bytes, dict[str, str]]) -> tuple[str, int, str]:
        name, body, headers = case
        r = management.predict(ts, "tessera-encoder", body, headers)
        return name, r.status_code, r.text

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, sent))
    bad = [(n, c, t[:200]) for n, c, t in results if not 400 <= c < 500]
    assert bad == []
    for name, _, text in results[: len(cases)]:  # every error says what was wrong, in JSON
        assert json.loads(text)["error"], name
    assert ts.ping()
    r = management.predict(ts, "tessera-encoder", png(9), {"Content-Type": "image/png"})
    assert r.status_code == 200
    assert requests.get(f"{ts.inference_url}/ping", timeout=5).json()["status"] == "Healthy"


def test_serving_bad_request_does_not_fail_its_batch_mates(ts) -> None:
    bodies = [
        (png(s), {"Content-Type": "image/png"}) if s % 2 else (b"junk", {"Content-Type": "image/png"})
        for s in range(8)
    ]
    with ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda b: management.predict(ts, "tessera-encoder", *b), bodies))
    assert [r.status_code for r in rs] == [400, 200] * 4


def test_serving_logs_each_request_once_in_a_rotated_file(ts) -> None:
    """Tessera's log4j2.xml: a request is one access-log line; no other log grows per request or
    batch (the worker's per-batch line is dropped by the handler, in the worker); no DEBUG lines;
    stdout stays quiet."""
    marker = f"/predictions/tessera-encoder?log-check={np.random.default_rng().integers(1 << 30)}"
    r = requests.post(f"{ts.inference_url}{marker}", data=png(5), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    logs = ts.home / "logs"
    access = (logs / "access_log.log").read_text()
    assert access.count(marker) == 1
    ts_log = (logs / "ts_log.log").read_text()
    assert marker not in ts_log and "[DEBUG]" not in ts_log
    assert "Sending response for jobId" not in ts_log
    assert "Torchserve version:" in ts_log  # the frontend's INFO lines are still there
    assert "[METRICS]" not in ts_log  # each batch's metrics go to /metrics, not to the log
    model_log = (logs / "model_log.log").read_text()
    assert "ready on" in model_log and "Backend received inference" not in model_log
    out = (logs / "torchserve.out").read_text(errors="replace")
    assert "/predictions/" not in out and "[DEBUG]" not in out and "[INFO ]" not in out
