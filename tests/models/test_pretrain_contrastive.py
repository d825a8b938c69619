"""SimCLR's NT-Xent against a slow reference loop; BYOL's EMA target and momentum schedule; the
contrastive models' encoders, registry names and augmentations."""

from __future__ import annotations

import math

import pytest
import torch

from tessera.augment import ViewDataset, contrastive_transform, mae_transform
from tessera.losses import NTXentLoss, byol_loss
from tessera.models import build, embed, names
from tessera.models.byol import BYOL, momentum_at
from tessera.models.simclr import SimCLR


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def slow_ntxent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """Chen et al. 2020, eq. (1) and Algorithm 1, one anchor at a time."""
    z = torch.cat([z1, z2]).double()
    n2 = z.shape[0]
    n = n2 // 2

    def sim(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a @ b / (a.norm() * b.norm()))

    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denom = sum(math.exp(sim(z[i], z[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(math.exp(sim(z[i], z[j]) / tau) / denom)
    return total / n2


@pytest.mark.parametrize(("n", "d", "tau"), [(2, 3, 0.5), (5, 8, 0.1), (8, 16, 1.0)])
def test_ntxent_matches_slow_reference(n: int, d: int, tau: float) -> None:
    z1, z2 = torch.randn(n, d), torch.randn(n, d)
    assert NTXentLoss(tau)(z1, z2).item() == pytest.approx(slow_ntxent(z1, z2, tau), rel=1e-5)


def test_ntxent_analytic_values() -> None:
    # identical views, orthogonal samples: loss = -log(e^(1/t) / (e^(1/t) + 2(n-1)))
    n, tau = 4, 0.5
    z = torch.eye(n)
    expect = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2 * (n - 1)))
    assert NTXentLoss(tau)(z, z).item() == pytest.approx(expect, rel=1e-6)
    with pytest.raises(ValueError):
        NTXentLoss(0.0)


def test_byol_loss_is_two_minus_two_cosine() -> None:
    p, z = torch.randn(6, 5), torch.randn(6, 5)
    cos = torch.nn.functional.cosine_similarity(p, z, dim=-1)
    assert byol_loss(p, z).item() == pytest.approx((2 - 2 * cos).mean().item(), rel=1e-5)
    assert byol_loss(p, p).item() == pytest.approx(0.0, abs=1e-6)


def test_byol_target_is_ema_of_online() -> None:
    model = build("byol_vit_micro_patch4")
    assert isinstance(model, BYOL)
    # starts as a copy, receives no gradient
    for t, o in zip(model.target_parameters(), model.online_parameters(), strict=True):
        assert torch.equal(t, o) and not t.requires_grad
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x1, x2 = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    before_target = [t.detach().clone() for t in model.target_parameters()]
    loss = model(x1, x2)[0]
    opt.zero_grad()
    loss.backward()
    assert all(t.grad is None for t in model.target_parameters())
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before_target, model.target_parameters(), strict=True))
    online = [o.detach().clone() for o in model.online_parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(before_target, online, strict=True))
    tau = 0.9
    model.update_target(tau)
    for t, t0, o in zip(model.target_parameters(), before_target, online, strict=True):
        assert torch.allclose(t, tau * t0 + (1 - tau) * o, atol=1e-6)


def test_byol_momentum_schedule_is_cosine_from_base_to_one() -> None:
    assert momentum_at(0, 100, 0.99) == pytest.approx(0.99)
    assert momentum_at(50, 100, 0.99) == pytest.approx(0.995)
    assert momentum_at(100, 100, 0.99) == pytest.approx(1.0)
    values = [momentum_at(k, 100, 0.9) for k in range(101)]
    assert values == sorted(values)


def test_simclr_forward_and_embed() -> None:
    model = build("simclr_vit_micro_patch4")
    assert isinstance(model, SimCLR)
    loss, z1, z2 = model(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32))
    assert z1.shape == z2.shape == (4, 32) and loss.ndim == 0
    loss.backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None
    assert embed(model, torch.rand(3, 3, 32, 32)).shape == (3, 64)


def test_registry_names_cover_every_method_and_size() -> None:
    for method in ("mae", "simclr", "byol"):
        for size in ("micro", "mini", "tiny"):
            assert f"{method}_vit_{size}_patch4" in names()
    assert {"mae_vit_base_patch16", "mae_vit_large_patch16", "simclr_vit_base_patch16"} <= set(names())


def test_augmentations_keep_range_shape_and_differ_per_view() -> None:
    imgs = torch.rand(3, 3, 32, 32)
    ds = ViewDataset(imgs, contrastive_transform(32), views=2)
    v1, v2 = ds[0]
    assert v1.shape == v2.shape == (3, 32, 32)
    assert float(v1.min()) >= 0.0 and float(v1.max()) <= 1.0
    assert not torch.equal(v1, v2)
    single = ViewDataset(imgs, mae_transform(32))[1]
    assert isinstance(single, torch.Tensor) and single.shape == (3, 32, 32)
    assert torch.equal(ViewDataset(imgs)[2], imgs[2])
