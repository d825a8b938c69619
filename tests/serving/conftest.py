"""Serving fixtures: tiny checkpoints, one real TorchServe per session (own ports, TMPDIR, local config)."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from serving import management, package, server
from tessera import checkpoint
from tessera.models import build
from tessera.models.registry import config_of

ENCODER = "mae_vit_micro_patch4"
DATA_VERSION = {"md5": "d41d8cd98f00b204e9800998ecf8427e", "files": 3, "size": 12}


def png(seed: int = 0, size: int = 32) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def as_tensor(data: bytes) -> torch.Tensor:
    arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255.0)  # (3, H, W)


def encoder_checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build(ENCODER)
    ckpt = checkpoint.make(ENCODER, config_of(ENCODER), model.state_dict(), data_version=DATA_VERSION)
    return checkpoint.save(ckpt, path)


def ttt_checkpoint(path: Path, seed: int) -> Path | None:
    """A TTT classifier on the micro MAE (the adapt helper's arch), or None if it is not there yet."""
    try:
        import tessera.adapt.heads  # noqa: F401
    except ImportError:
        return None
    from tessera.models import registry

    torch.manual_seed(seed)
    cfg = registry.config_of(
        "ttt_mae_classifier",
        backbone_arch=ENCODER,
        backbone_config=config_of(ENCODER),
        num_classes=3,
        rotation_head=False,
    )
    model = registry.build("ttt_mae_classifier", **cfg)
    ckpt = checkpoint.make(
        "ttt_mae_classifier",
        cfg,
        model.state_dict(),
        data_version=DATA_VERSION,
        classes=["cat", "dog", "frog"],
        extra={"ttt": {"steps": 2, "copies": 4, "lr": 0.05, "mask_ratio": 0.75}},
    )
    return checkpoint.save(ckpt, path)


def wait_ready(srv: server.Server, name: str, kind: str = "encoder", timeout: float = 60) -> None:
    body, headers = management.probe_request(kind)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if management.predict(srv, name, body, headers).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{name} never answered")


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "encoder": encoder_checkpoint(root / "encoder.pt", 0),
        "encoder2": encoder_checkpoint(root / "encoder2.pt", 1),
        "ttt": ttt_checkpoint(root / "ttt.pt", 2),
    }


@pytest.fixture(scope="session")
def ts(tmp_path_factory: pytest.TempPathFactory, ckpts: dict[str, Any]) -> Any:
    """A local-config TorchServe with the encoder (v1) and, when available, the TTT classifier."""
    home = tmp_path_factory.mktemp("ts")
    cfg = package.Config(
        batch_size=8, max_batch_delay_ms=20, max_images=4, ttt_max_steps=10, ttt_max_copies=8
    )
    models = {
        "tessera-encoder": package.package(
            ckpts["encoder"], "tessera-encoder", 1, home / "model-store", cfg
        ).name
    }
    if ckpts["ttt"] is not None:
        models["tessera-ttt-classifier"] = package.package(
            ckpts["ttt"], "tessera-ttt-classifier", 1, home / "model-store", cfg
        ).name
    srv = server.start(home, "local", server.Ports.free(), models=models)
    try:
        wait_ready(srv, "tessera-encoder")
        yield srv
    finally:
        server.stop(home)
