"""The shared training pieces: warm-up/cosine schedule, AdamW groups, the resume helper's errors,
and the loop's determinism per epoch (what makes resuming exact)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tessera import checkpoint
from tessera.errors import CheckpointError
from tessera.models import build, config_of
from tessera.training import (
    DistEnv,
    LoopSettings,
    fit,
    make_loader,
    make_optimizer,
    param_groups,
    resume,
    warmup_cosine,
)
from tessera.training.methods import dataset_for, fit_size, loss_fn_for


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_warmup_then_cosine() -> None:
    lrs = [warmup_cosine(s, 100, 10, 1.0, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[:10] == sorted(lrs[:10])
    assert lrs[10:] == sorted(lrs[10:], reverse=True)
    assert warmup_cosine(55, 100, 10, 1.0, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(0, 10, 0, 2.0) == pytest.approx(2.0)


def test_param_groups_skip_decay_on_biases_norms_tokens() -> None:
    model = build("byol_vit_micro_patch4")
    decay, no_decay = param_groups(model, 0.05)
    named = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {named[id(p)] for p in no_decay["params"]}  # type: ignore[attr-defined]
    decay_names = {named[id(p)] for p in decay["params"]}  # type: ignore[attr-defined]
    assert "encoder.cls_token" in no_decay_names and "encoder.norm.weight" in no_decay_names
    assert "encoder.blocks.0.attn.qkv.weight" in decay_names
    assert not any(n.startswith("target_") for n in decay_names | no_decay_names)  # EMA target: no grads
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05


def _train(epochs: int, stop_after: int | None = None, model=None, opt=None, start=(0, 0)):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = model or build("mae_vit_micro_patch4")
    opt = opt or make_optimizer(model, 1e-3, 0.05)
    images = fit_size(torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(1)), 32)
    loader = make_loader(dataset_for("mae", images), 8, DistEnv(), seed=3)

    class Stop(Exception):
        pass

    def on_end(epoch: int, step: int, metrics: dict[str, float]) -> None:
        if stop_after is not None and epoch == stop_after:
            raise Stop

    settings = LoopSettings(epochs=epochs, lr=1e-3, warmup_epochs=1, seed=5)
    try:
        step = fit(
            model,
            loader,
            opt,
            loss_fn=loss_fn_for("mae"),
            settings=settings,
            env=DistEnv(),
            start_epoch=start[0],
            start_step=start[1],
            on_epoch_end=on_end,
            progress=False,
        )
    except Stop:
        step = -1
    return model, opt, step


def test_fit_resumed_at_an_epoch_boundary_follows_the_same_trajectory() -> None:
    full, _, step = _train(3)
    assert step == 9
    half, opt, _ = _train(3, stop_after=1)
    fresh = build("mae_vit_micro_patch4")
    fresh.load_state_dict(half.state_dict())
    fresh_opt = make_optimizer(fresh, 1e-3, 0.05)
    fresh_opt.load_state_dict(opt.state_dict())
    resumed, _, step = _train(3, model=fresh, opt=fresh_opt, start=(1, 3))
    assert step == 9
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), k


def test_resume_helper_refuses_other_arch_config_and_corrupt_files(tmp_path: Path) -> None:
    model = build("mae_vit_micro_patch4")
    cfg = config_of("mae_vit_micro_patch4")
    assert resume(tmp_path / "none.pt", model, arch="mae_vit_micro_patch4") is None
    path = checkpoint.save(
        checkpoint.make("mae_vit_micro_patch4", cfg, model.state_dict(), epoch=2, step=6), tmp_path / "enc.pt"
    )
    ckpt = resume(path, build("mae_vit_micro_patch4"), arch="mae_vit_micro_patch4", config=cfg)
    assert ckpt is not None and ckpt["step"] == 6
    with pytest.raises(CheckpointError, match="expected 'mae_vit_tiny_patch4'.*delete"):
        resume(path, build("mae_vit_tiny_patch4"), arch="mae_vit_tiny_patch4")
    with pytest.raises(CheckpointError, match="model config"):
        resume(path, model, arch="mae_vit_micro_patch4", config={**cfg, "mask_ratio": 0.5})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="corrupt"):
        resume(path, model, arch="mae_vit_micro_patch4")


@pytest.mark.gpu
def test_fit_on_cuda_with_bf16_autocast() -> None:
    env = DistEnv(device=torch.device("cuda"))
    model = build("mae_vit_micro_patch4").cuda()
    loader = make_loader(dataset_for("mae", torch.rand(32, 3, 32, 32)), 16, env, seed=0)
    seen: list[float] = []
    step = fit(
        model,
        loader,
        make_optimizer(model, 1e-3, 0.05),
        loss_fn=loss_fn_for("mae"),
        env=env,
        settings=LoopSettings(epochs=2, lr=1e-3, amp=True),
        progress=False,
        on_epoch_end=lambda e, s, m: seen.append(m["loss"]),
    )
    assert step == 4 and len(seen) == 2 and all(np.isfinite(seen))


@pytest.mark.full
def test_fit_with_torch_compile_on_cpu() -> None:
    model = build("mae_vit_micro_patch4")
    loader = make_loader(dataset_for("mae", torch.rand(32, 3, 32, 32)), 16, DistEnv(), seed=0)
    step = fit(
        torch.compile(model),
        loader,
        make_optimizer(model, 1e-3, 0.05),
        loss_fn=loss_fn_for("mae"),
        env=DistEnv(),
        settings=LoopSettings(epochs=1, lr=1e-3),
        progress=False,
    )
    assert step == 2
