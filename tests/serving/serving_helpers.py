"""Helpers of the serving tests: tiny checkpoints, PNG bodies, waiting for a model (imported by name:
``from serving_helpers import png``; conftest.py holds the fixtures)."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

from serving import management, server
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


def encoder_checkpoint(path: Path, seed: int, data_version: dict | None = None) -> Path:
    torch.manual_seed(seed)
    model = build(ENCODER)
    version = data_version or DATA_VERSION
    ckpt = checkpoint.make(ENCODER, config_of(ENCODER), model.state_dict(), data_version=version)
    return checkpoint.save(ckpt, path)


def policy(adapt: bool) -> dict:
    """An adaptation policy as evaluate writes one: TTT-MAE at 2 steps x 4 copies, or none."""
    from tessera.adapt.policy import Candidate, choose

    low = 0.02 if adapt else -0.01
    candidate = Candidate("ttt_mae_episodic", {"steps": 2, "copies": 4}, 0.05, low, 0.08, 0.1, 200)
    return choose([candidate], max_seconds_per_image=5.0, selected_on=["spatter"])


def ttt_checkpoint(path: Path, seed: int, adapt: bool = True) -> Path:
    """A TTT classifier on the micro MAE (``tessera.adapt.heads`` registers its arch) whose policy
    adapts (TTT-MAE, 2 steps x 4 copies) or not."""
    import tessera.adapt.heads  # noqa: F401
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
        extra={"ttt": {"steps": 2, "copies": 4, "lr": 0.05, "mask_ratio": 0.75}, "policy": policy(adapt)},
    )
    return checkpoint.save(ckpt, path)


def generator_checkpoint(path: Path) -> Path:
    """A tiny IC-GAN bundle on the micro MAE (``tessera.generators`` registers ``icgan``)."""
    import tessera.generators  # noqa: F401

    torch.manual_seed(5)
    cfg = {
        "generator": {"h_dim": 64, "img_size": 32, "z_dim": 16, "ch": 16, "cond_dim": 16},
        "encoder_arch": ENCODER,
        "encoder_config": config_of(ENCODER),
        "bank_size": 8,
    }
    model = build("icgan", **cfg)
    model.bank.normal_()
    ckpt = checkpoint.make("icgan", cfg, model.state_dict(), data_version=DATA_VERSION)
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
