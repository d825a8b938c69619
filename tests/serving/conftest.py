"""Serving fixtures: tiny checkpoints, one real TorchServe per session (own ports, TMPDIR, local config)."""

from __future__ import annotations

from typing import Any

import pytest
from serving_helpers import encoder_checkpoint, ttt_checkpoint, wait_ready

from serving import package, server


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "encoder": encoder_checkpoint(root / "encoder.pt", 0),
        "encoder2": encoder_checkpoint(root / "encoder2.pt", 1, {"md5": "md5-encoder2"}),
        "ttt": ttt_checkpoint(root / "ttt.pt", 2),
    }


@pytest.fixture(scope="session")
def ts(tmp_path_factory: pytest.TempPathFactory, ckpts: dict[str, Any]) -> Any:
    """A local-config TorchServe with the encoder (v1) and the TTT classifier (v1)."""
    home = tmp_path_factory.mktemp("ts")
    cfg = package.Config(
        batch_size=8, max_batch_delay_ms=20, max_images=4, ttt_max_steps=10, ttt_max_copies=8
    )
    models = {
        name: package.package(ckpts[key], name, 1, home / "model-store", cfg).name
        for name, key in (("tessera-encoder", "encoder"), ("tessera-ttt-classifier", "ttt"))
    }
    srv = server.start(home, "local", server.Ports.free(), models=models)
    try:
        wait_ready(srv, "tessera-encoder")
        yield srv
    finally:
        server.stop(home)
