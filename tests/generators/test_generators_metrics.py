"""Encoder-space Fréchet distance and KID through torchmetrics with the Tessera encoder as features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from generators_helpers import as_tensor, shapes
from scipy import linalg

from tessera.generators.metrics import EmbedFeatures, EncoderSpaceScore, frechet_distance
from tessera.models.embed import embed


def _reference_fd(a: np.ndarray, b: np.ndarray) -> float:
    """Heusel et al.'s formula with scipy's matrix square root (the slow reference)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fd_matches_the_reference_formula(tiny_mae: torch.nn.Module) -> None:
    real, fake = as_tensor(shapes(120, seed=1)), as_tensor(shapes(100, seed=2)).flip(-1) * 0.8
    fd = frechet_distance(tiny_mae, real, fake)
    ref = _reference_fd(embed(tiny_mae, real).double().numpy(), embed(tiny_mae, fake).double().numpy())
    assert fd == pytest.approx(ref, rel=1e-3, abs=1e-4)


def test_fd_of_a_set_to_itself_is_zero_and_grows_with_corruption(tiny_mae: torch.nn.Module) -> None:
    real = as_tensor(shapes(120, seed=3))
    score = EncoderSpaceScore(tiny_mae, real, kid_subset_size=50, kid_subsets=10)
    same = score.score(real)
    assert same["fd"] < 1e-3 and abs(same["kid"]) < 1e-3
    assert same["n_real"] == 120 and same["n_fake"] == 120
    g = torch.Generator().manual_seed(0)
    fds, kids = [], []
    for sigma in (0.05, 0.15, 0.4):
        noisy = (real + sigma * torch.randn(real.shape, generator=g)).clamp(0, 1)
        r = score.score(noisy)
        fds.append(r["fd"])
        kids.append(r["kid"])
    assert same["fd"] < fds[0] < fds[1] < fds[2]
    assert kids[0] < kids[2]


def test_feature_module_is_the_one_embedding(tiny_mae: torch.nn.Module) -> None:
    x = torch.rand(4, 3, 32, 32)
    f = EmbedFeatures(tiny_mae)
    assert f.num_features == 64
    assert torch.equal(f(x), embed(tiny_mae, x))
    assert torch.equal(f(f(x)), f(x))  # precomputed embeddings pass through


def test_kid_is_deterministic(tiny_mae: torch.nn.Module) -> None:
    real, fake = as_tensor(shapes(60, seed=4)), as_tensor(shapes(60, seed=5))
    score = EncoderSpaceScore(tiny_mae, real, kid_subset_size=30, kid_subsets=5)
    assert score.score(fake) == score.score(fake)
