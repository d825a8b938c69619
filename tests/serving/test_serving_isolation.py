"""Per-request isolation, request models and admission control, in process (no TorchServe started):
the handlers run on a stand-in for TorchServe's context, one batch at a time, as the worker calls them."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from serving_helpers import b64, png, policy

from serving.handlers import schema
from serving.handlers.encoder import EncoderHandler
from serving.handlers.request import RequestError, load_json
from serving.handlers.ttt_classifier import TTTClassifierHandler

JSON = "application/json"


class Context:
    """What a Tessera handler uses of ``ts.context.Context``."""

    def __init__(self, model_dir: Path, name: str, yaml_cfg: dict[str, Any]) -> None:
        self.manifest = {"model": {"serializedFile": "model.pt", "modelVersion": "1"}}
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None}
        self.model_yaml_config = yaml_cfg
        self.model_name = name
        self.metrics = None
        self.headers: list[dict[str, Any]] = []
        self.status: dict[int, int] = {}

    def get_all_request_header(self, idx: int) -> dict[str, Any]:
        return self.headers[idx]

    def get_request_header(self, idx: int, key: str) -> Any:
        return self.headers[idx].get(key)

    def get_request_id(self, idx: int) -> str:
        return f"req-{idx}"

    def set_response_status(self, code: int, phrase: str, idx: int) -> None:
        assert all(" " <= c <= "~" for c in phrase), phrase  # the HTTP status line
        self.status[idx] = code

    def set_response_content_type(self, idx: int, value: str) -> None:
        pass

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        pass


def _handler(cls: type, ckpt: Path, tmp: Path, settings: dict[str, Any] | None = None, **yaml_cfg: Any):
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ckpt, tmp / "model.pt")
    cfg = {"batchSize": 8, "responseTimeout": 120, **yaml_cfg}
    cfg["handler"] = {"max_images": 4, "torch_threads": torch.get_num_threads(), **(settings or {})}
    handler = cls()
    handler.initialize(Context(tmp, cls.__name__, cfg))
    return handler


@pytest.fixture
def raw_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    """initialize() turns TorchServe's body decoding off in its (worker) process: undo it here."""
    monkeypatch.setenv("TS_DECODE_INPUT_REQUEST", "true")


@pytest.fixture
def encoder(ckpts, tmp_path, raw_bodies) -> EncoderHandler:
    return _handler(EncoderHandler, ckpts["encoder"], tmp_path / "enc")


def _call(handler: Any, requests: list[tuple[Any, str] | tuple[Any, str, dict]]) -> list[tuple[int, Any]]:
    """One TorchServe batch: (body, content type[, request headers]) each -> (status, answer) each."""
    ctx = handler.context
    ctx.headers = [{"body": {"content-type": r[1]}, **(r[2] if len(r) > 2 else {})} for r in requests]
    ctx.status = {}
    answers = handler.handle([{"body": r[0]} for r in requests], ctx)
    assert len(answers) == len(requests)
    return [(ctx.status.get(i, 200), json.loads(a)) for i, a in enumerate(answers)]


def test_serving_one_malformed_request_fails_alone_in_its_batch(encoder) -> None:
    good = (png(1), "image/png")
    bad = [
        (bytearray(b"null"), JSON),  # bytes(None) before
        (bytearray(b"1000000000"), JSON),  # bytes(10**9): 1 GB before
        (bytearray(b"[" * 100_000), JSON),  # RecursionError before
        (bytearray(b'{"images": ' + b"[" * 500 + b"]" * 500 + b"}"), JSON),
        (json.dumps({"image": b64(png(2)), "steps": "²"}).encode(), JSON),
        (b"x" * (11 << 20), "image/png"),  # over max_body_bytes: 413, not a reset
        (b"hello", "text/plain"),
        (None, JSON),  # a value TorchServe decoded itself (decoding on)
        (1000000000, JSON),
        ({"images": "abc"}, JSON),
    ]
    got = _call(encoder, [good, *bad, good])
    assert got[0][0] == got[-1][0] == 200 and len(got[0][1]["embeddings"]) == 1
    assert got[0][1]["embeddings"] == got[-1][1]["embeddings"]
    codes = [c for c, _ in got[1:-1]]
    assert all(400 <= c < 500 for c in codes), codes
    assert codes[5] == 413 and codes[6] == 415
    assert all(a["error"] and a["code"] == c for c, a in got[1:-1])
    assert "steps" in got[5][1]["error"]


def test_serving_explain_or_describe_header_does_not_divert_the_batch(encoder) -> None:
    got = _call(encoder, [(png(1), "image/png", {"explain": "True"}), (png(2), "image/png")])
    assert [c for c, _ in got] == [200, 200]
    assert _call(encoder, [(png(1), "image/png", {"describe": "True"})])[0][0] == 200


def test_serving_failed_batched_predict_is_retried_request_by_request(encoder, caplog) -> None:
    real = encoder.predict

    def predict(items: list) -> list:
        if any(float(it.images.max()) == 0.0 for it in items):  # an all-black image breaks the model
            raise RuntimeError("poisoned batch")
        return real(items)

    encoder.predict = predict
    black = torch.zeros(3, 32, 32, dtype=torch.uint8).permute(1, 2, 0).numpy()
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(black).save(buf, format="PNG")
    with caplog.at_level(logging.ERROR):
        got = _call(encoder, [(png(1), "image/png"), (buf.getvalue(), "image/png"), (png(2), "image/png")])
    assert [c for c, _ in got] == [200, 500, 200]
    assert "req-1" in got[1][1]["error"] and "req-1" in caplog.text and "poisoned batch" in caplog.text


def test_serving_unexpected_error_in_one_request_is_a_500_for_it_alone(encoder, caplog) -> None:
    real_plan, real_encode = encoder.plan, encoder.encode
    calls = {"plan": 0, "encode": 0}

    def plan(req: Any, item: Any) -> dict:
        calls["plan"] += 1
        if calls["plan"] == 2:
            raise KeyError("a bug in one request's options")
        return real_plan(req, item)

    def encode(answer: dict) -> Any:
        calls["encode"] += 1
        if calls["encode"] == 2:
            raise TypeError("cannot encode")
        return real_encode(answer)

    encoder.plan, encoder.encode = plan, encode
    with caplog.at_level(logging.ERROR):
        got = _call(encoder, [(png(s), "image/png") for s in range(4)])
    # request 1 fails while read, request 2 while its answer is written; 0 and 3 are answered
    assert [c for c, _ in got] == [200, 500, 500, 200]
    assert "req-1" in caplog.text and "req-2" in caplog.text


def test_serving_worker_hands_raw_bytes_once_decoding_is_off(monkeypatch) -> None:
    """The handlers rely on TorchServe's worker reading TS_DECODE_INPUT_REQUEST for each request."""
    from ts.protocol.otf_message_handler import _retrieve_input_data

    def frame(body: bytes, ctype: bytes) -> bytes:
        parts = [b"body", ctype, body]
        return b"".join(struct.pack("!i", len(p)) + p for p in parts)

    for env, want in (("true", None), ("false", bytearray(b"null"))):
        monkeypatch.setenv("TS_DECODE_INPUT_REQUEST", env)
        a, b = socket.socketpair()
        with a, b:
            a.sendall(frame(b"null", b"application/json"))
            assert _retrieve_input_data(b)["value"] == want


def test_serving_json_bodies_are_bounded_before_they_are_decoded() -> None:
    for body in (b"[" * 10_000, b"[" + b"0," * 100_000 + b"0]", b'{"a": ' * 100 + b"1" + b"}" * 100):
        with pytest.raises(RequestError) as e:
            load_json(body)
        assert e.value.code == 400 and "nested" in e.value.message
    with pytest.raises(RequestError):
        load_json(b"\xff\xfe")
    assert load_json(b'{"images": ["QQ=="], "box": [1, 2, 3, 4]}')["box"] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("model", "fields", "words"),
    [
        (schema.EncoderRequest, {"stepz": 3}, ["unknown option", "stepz", "images"]),
        (schema.EncoderRequest, {"image": None}, ["'image'", "null"]),
        (schema.EncoderRequest, {"images": [1]}, ["images[0]", "base64"]),
        (schema.generator_model(4), {"n": 5}, ["'n'", "[1, 4]"]),
        (schema.generator_model(4), {"mask": None}, ["'mask'", "null"]),
        (schema.generator_model(4), {"mask": 1.5}, ["'mask'", "string"]),
        (schema.generator_model(4), {"box": [0, 0, float("inf"), 8]}, ["box[2]", "finite"]),
        (schema.generator_model(4), {"box": [0, 0, 8]}, ["'box'"]),
        (schema.generator_model(4), {"box": [0, 0, 8, 8], "outpaint": 0.5}, ["one region"]),
        (schema.generator_model(4), {"outpaint": float("nan")}, ["'outpaint'", "finite"]),
        (schema.generator_model(4), {"format": "gif"}, ["'format'", "png"]),
        (schema.ttt_model(10, 8, ("none", "ttt_mae_episodic")), {"steps": "²"}, ["'steps'", "integer"]),
        (schema.ttt_model(10, 8, ("none", "ttt_mae_episodic")), {"steps": True}, ["'steps'", "number"]),
        (schema.ttt_model(10, 8, ("none", "ttt_mae_episodic")), {"steps": 11}, ["'steps'", "[0, 10]"]),
        (schema.ttt_model(10, 8, ("none", "ttt_mae_episodic")), {"copies": 0}, ["'copies'", "[1, 8]"]),
        (schema.ttt_model(10, 8, ("none", "ttt_mae_episodic")), {"method": "tent"}, ["'method'", "none"]),
        (schema.ttt_model(10, 8, ("none", "ttt_mae_episodic")), {"seed": 2**31}, ["'seed'"]),
    ],
)
def test_serving_validation_errors_name_the_field(model, fields, words) -> None:
    with pytest.raises(RequestError) as e:
        schema.validate(model, fields)
    assert e.value.code == 400
    for word in words:
        assert word in e.value.message, (word, e.value.message)


def test_serving_request_models_take_what_the_endpoints_documented() -> None:
    ttt = schema.ttt_model(10, 8, ("none", "ttt_mae_episodic"))
    req = schema.validate(ttt, {"image": "QQ==", "steps": "3", "copies": 4.0, "method": "none"})
    assert (req.steps, req.copies, req.seed, req.method) == (3, 4, 0, "none")
    assert req.model_fields_set == {"image", "steps", "copies", "method"}
    gen = schema.validate(schema.generator_model(4), {"box": [1, 2.5, 30, 31]})
    assert gen.n == 4 and gen.regions() == ["box"]
    assert schema.scale_box([8, 8, 16, 16], (64, 32), 32) == [0, 8, 0, 16]  # centre crop x 16..48
    assert schema.scale_box([-1e7, 0, 1e7, 32], (32, 32), 32) == [0, 0, 32, 32]


def test_serving_ttt_plan_keeps_the_policy_logic() -> None:
    adapt = policy(True)
    dep = schema.TTTDeployment(steps=2, copies=4, max_steps=10, max_copies=8, policy=adapt)
    model = dep.model()
    plan = dep.plan(schema.validate(model, {}))
    assert (plan["method"], plan["method_source"], plan["policy_version"]) == (
        "ttt_mae_episodic",
        "policy",
        adapt["version"],
    )
    assert (plan["steps"], plan["copies"], plan["seed"]) == (2, 4, 0)
    asked = dep.plan(schema.validate(model, {"steps": 3, "seed": 7}))
    assert (asked["method_source"], asked["steps"], asked["seed"]) == ("request", 3, 7)
    frozen = dep.plan(schema.validate(model, {"method": "none"}))
    assert (frozen["method"], frozen["steps"]) == ("none", 0)
    none = schema.TTTDeployment(steps=2, copies=4, max_steps=10, max_copies=8, policy=policy(False))
    assert none.plan(schema.validate(none.model(), {}))["steps"] == 0
    norm = dep.plan(schema.validate(model, {"method": "normstat"}))  # no TTT work: nothing to admit
    assert (norm["method"], norm["steps"], norm["settings"]) == ("normstat", 0, {})
    online = schema.TTTDeployment(steps=2, copies=4, max_steps=10, max_copies=8, online=True)
    assert online.plan(schema.validate(online.model(), {"steps": 2}))["method"] == "ttt_mae_online"
    with pytest.raises(RequestError, match="adapts online"):
        online.plan(schema.validate(online.model(), {"steps": 5}))


def test_serving_work_budget_names_the_largest_budget_allowed() -> None:
    budget = schema.WorkBudget(max_units=100, seconds_per_unit=0.01, seconds=1.0)
    budget.check(1, 10, 10)
    budget.check(4, 0, 64)  # no adaptation: no work
    with pytest.raises(RequestError) as e:
        budget.check(2, 10, 8)
    assert e.value.code == 400
    assert "at most 100 units" in e.value.message and "steps <= 6 at copies=8" in e.value.message
    assert schema.budget_seconds(120, 8) == 7.5
    slow = schema.calibrate(lambda: None, 4, seconds=0.0, floor=8, ceiling=320)
    assert slow.max_units == 8  # never below the deployment's default request
    fast = schema.calibrate(lambda: None, 4, seconds=1e6, floor=8, ceiling=320)
    assert fast.max_units == 320 and fast.seconds_per_unit > 0


def test_serving_ttt_handler_admits_work_within_its_budget(ckpts, tmp_path, raw_bodies) -> None:
    ttt = _handler(TTTClassifierHandler, ckpts["ttt"], tmp_path / "ttt", {"max_steps": 10, "max_copies": 8})
    calibrated = ttt.budget
    assert calibrated.seconds_per_unit > 0 and calibrated.max_units >= 2 * 4
    capped = _handler(
        TTTClassifierHandler, ckpts["ttt"], tmp_path / "capped", {"max_work": 16, "max_steps": 10}
    )
    body = {"image": b64(png(3)), "copies": 4}
    got = _call(
        capped,
        [
            (json.dumps({**body, "steps": 4}).encode(), JSON),  # 16 units: admitted
            (json.dumps({**body, "steps": 5}).encode(), JSON),  # 20 units: refused
            (json.dumps({**body, "images": [b64(png(4))] * 2, "steps": 0}).encode(), JSON),  # no work
        ],
    )
    assert [c for c, _ in got] == [200, 400, 200]
    assert "at most 16 units" in got[1][1]["error"] and "steps <= 4" in got[1][1]["error"]
    assert got[0][1]["method_source"] == "request"
    assert len(got[0][1]["predictions"][0]["loss"]["per_step"]) == 4
