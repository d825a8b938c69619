"""Deployment on a running TorchServe: second version, default switch, rollback; production auth."""

from __future__ import annotations

import json

import pytest
import requests
from serving_helpers import encoder_checkpoint, png, wait_ready

from serving import management, package, server

pytestmark = pytest.mark.integration
NAME = "tessera-encoder"
PNG = {"Content-Type": "image/png"}


def _answer_version(srv: server.Server) -> str:
    r = management.predict(srv, NAME, png(4), PNG)
    assert r.status_code == 200, r.text
    return r.json()["model_version"]


@pytest.mark.slow
def test_serving_deploy_second_version_then_rollback(ts, ckpts, prefect_harness) -> None:
    from flows.deploy import deploy, rollback

    assert _answer_version(ts) == "1"
    # a real Prefect flow run (ephemeral API); the other tests call the flow's function directly
    out = deploy(
        model=NAME,
        checkpoint=str(ckpts["encoder2"]),
        version="2",
        home=str(ts.home),
        cfg=package.Config(max_images=4),
    )
    assert out["default"] == "2" and out["previous"] == "1"
    assert out["smoke"]["model_version"] == "2"
    assert _answer_version(ts) == "2"
    assert sorted(management.versions(ts, NAME)) == ["1", "2"]  # the previous one is kept
    listed = {v["version"]: v["default"] for v in server.status(ts.home)["models"][NAME]}
    assert listed == {"1": False, "2": True}
    back = rollback.fn(models=[NAME], home=str(ts.home), registry=False)
    assert back["models"][NAME] == {"from": "2", "to": "1"}
    assert _answer_version(ts) == "1"
    assert management.default_version(ts, NAME) == "1"
    with pytest.raises(server.ServingError, match="no previous version"):
        rollback.fn(models=[NAME], home=str(ts.home), registry=False)


def test_serving_failed_smoke_keeps_default(ts, tmp_path, prefect_harness) -> None:
    from flows.deploy import deploy

    broken = tmp_path / "broken.pt"
    encoder_checkpoint(broken, 3)
    from tessera import checkpoint

    ckpt = checkpoint.load(broken)
    ckpt["config"] = {**ckpt["config"], "embed_dim": 32}  # weights no longer fit: the worker cannot load
    checkpoint.save(ckpt, broken)
    before = management.default_version(ts, NAME)
    with pytest.raises(server.ServingError):
        deploy.fn(model=NAME, checkpoint=str(broken), version="9", home=str(ts.home))
    assert management.default_version(ts, NAME) == before
    assert "9" not in management.versions(ts, NAME)


@pytest.mark.slow
def test_serving_production_config_requires_tokens(tmp_path, ckpts) -> None:
    home = tmp_path / "prod"
    mar = package.package(ckpts["encoder"], NAME, 5, home / "model-store", package.Config())
    try:
        srv = server.start(home, "production", server.Ports.free(), models={NAME: mar.name})
        wait_ready(srv, NAME)  # with the inference key from key_file.json
        url = f"{srv.inference_url}/predictions/{NAME}"
        assert requests.post(url, data=png(0), headers=PNG, timeout=30).status_code in (400, 401)
        assert requests.get(f"{srv.management_url}/models", timeout=10).status_code in (400, 401)
        wrong = {"Authorization": "Bearer not-the-key", **PNG}
        assert requests.post(url, data=png(0), headers=wrong, timeout=30).status_code in (400, 401)
        ok = management.predict(srv, NAME, png(0), PNG)
        assert ok.status_code == 200 and ok.json()["model_version"] == "5"
        assert management.default_version(srv, NAME) == "5"  # management key read from the key file
        cfg = (home / "config.properties").read_text()
        assert "disable_token_authorization=false" in cfg
        assert f"management_address=http://127.0.0.1:{srv.ports.management}" in cfg
        key = json.loads((home / "key_file.json").read_text())["management"]["key"]
        assert key not in (home / "server.json").read_text()
    finally:
        server.stop(home)
