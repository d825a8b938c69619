"""Data parallelism on the CPU: two gloo processes train on different shards and end with identical
weights (DDP averages the gradients); the pretrain component runs under the same setup and only
rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, port: int, tmp: str, data: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        CUDA_VISIBLE_DEVICES="",
    )
    torch.set_num_threads(1)
    from components.pretrain import Config, run
    from tessera.models import build
    from tessera.training import LoopSettings, fit, init_from_env, make_loader, make_optimizer, shutdown, wrap
    from tessera.training.methods import dataset_for, loss_fn_for

    env = init_from_env("cpu")
    torch.manual_seed(0)  # same initial weights on both ranks
    model = build("mae_vit_micro_patch4")
    images = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loader = make_loader(dataset_for("mae", images), 8, env, seed=0)
    opt = make_optimizer(model, 1e-3, 0.05)
    step = fit(
        wrap(model, env),
        loader,
        opt,
        loss_fn=loss_fn_for("mae"),
        env=env,
        progress=False,
        settings=LoopSettings(epochs=2, lr=1e-3, warmup_epochs=1, seed=0),
    )
    torch.save({"step": step, "model": model.state_dict()}, Path(tmp) / f"rank{rank}.pt")
    # the component itself, in the same process group
    cfg = Config(arch="mae_vit_micro_patch4", epochs=1, batch_size=8, device="cpu", grid_every=1)
    run(cfg, data, Path(tmp) / "out", data_version={"md5": "x"}, progress=False)
    assert torch.distributed.is_initialized()  # run() leaves a group it did not start
    shutdown(env)


def _image_folder(root: Path, n: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / "train" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


@pytest.mark.slow
def test_ddp_gloo_two_processes_end_with_identical_weights(tmp_path: Path) -> None:
    data = _image_folder(tmp_path / "data")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), str(data)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["step"] == r1["step"] == 4  # 32 images / 2 ranks / batch 8 = 2 steps per epoch, 2 epochs
    initial = _initial_state()
    moved = False
    for k, a in r0["model"].items():
        assert torch.equal(a, r1["model"][k]), k
        moved |= not torch.equal(a, initial[k])
    assert moved
    ckpt = torch.load(tmp_path / "out" / "encoder.pt", weights_only=True)
    assert ckpt["step"] == 2  # 32 images sharded over 2 ranks, batch 8 per rank
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["steps"] == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["encoder.pt", "grids", "metrics.json"]


def _initial_state() -> dict[str, torch.Tensor]:
    from tessera.models import build

    torch.manual_seed(0)
    return build("mae_vit_micro_patch4").state_dict()
