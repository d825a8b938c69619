"""Deploy from the MLflow registry (models:/NAME@champion) and roll back TorchServe + champion together."""

from __future__ import annotations

import pytest
from serving_helpers import png

from serving import management, package, server

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NAME = "tessera-encoder"


def _release(client, exp: str, ckpts: dict, encoder_key: str) -> str:
    from lifecycle import registry

    run = client.create_run(exp).info.run_id
    # each version's data_version tag is copied from its checkpoint's stamp
    registry.register_release(client, run, {"encoder": ckpts[encoder_key], "classifier": ckpts["ttt"]})
    return run


def _champion(client, run: str, previous: str | None) -> None:
    from lifecycle import registry

    for kind, mv in registry.release_versions(client, run).items():
        client.set_registered_model_alias(registry.BUNDLES[kind], registry.CHAMPION, mv.version)
        if previous:
            client.set_model_version_tag(
                registry.BUNDLES[kind], mv.version, "promotion.previous_release", previous
            )


def test_serving_deploy_from_registry_and_rollback_moves_champion(
    ckpts, tmp_path, monkeypatch, prefect_harness
) -> None:
    from lifecycle import tracking

    monkeypatch.setenv("TESSERA_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("TESSERA_MLFLOW_URI", f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}")
    client = tracking.client()
    exp = tracking.experiment_id(client)
    first = _release(client, exp, ckpts, "encoder")
    _champion(client, first, None)
    cfg = package.Config(max_images=4)
    ts = server.start(tmp_path / "ts", "local", server.Ports.free())  # its own, empty TorchServe
    try:
        _deploy_and_rollback(ts, client, exp, ckpts, first, cfg)
    finally:
        server.stop(tmp_path / "ts")


def _deploy_and_rollback(ts, client, exp, ckpts, first, cfg) -> None:
    from flows.deploy import deploy, rollback
    from lifecycle import registry, release

    out1 = deploy.fn(model=NAME, alias="champion", home=str(ts.home), cfg=cfg)
    v1 = out1["version"]
    second = _release(client, exp, ckpts, "encoder2")
    _champion(client, second, first)
    out2 = deploy.fn(model=NAME, alias="champion", home=str(ts.home), cfg=cfg)
    v2 = out2["version"]
    assert int(v2) == int(v1) + 1 and out2["default"] == v2
    r = management.predict(ts, NAME, png(1), {"Content-Type": "image/png"})
    assert r.json()["model_version"] == v2 and r.json()["data_version"] == "md5-encoder2"
    assert client.get_model_version(NAME, v2).tags["data_version"] == "md5-encoder2"
    back = rollback.fn(models=[NAME], home=str(ts.home), registry=True)
    assert back["models"][NAME]["to"] == v1
    assert management.default_version(ts, NAME) == v1
    assert release.champion_version(NAME) == v1
    assert registry.release_of(client) == first
    r = management.predict(ts, NAME, png(1), {"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["model_version"] == v1
