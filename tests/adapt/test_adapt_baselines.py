"""Baselines and helpers: TENT, norm-stat, rotation TTT, kNN, linear probe, metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from adapt_helpers import as_tensor, digits_32
from scipy.stats import binomtest

from tessera.adapt.heads import TTTClassifier
from tessera.adapt.knn import knn_probs
from tessera.adapt.metrics import ci95_halfwidth, stratified_subset, summarize, wilson_interval
from tessera.adapt.normstat import has_batchnorm, normstat_predict
from tessera.adapt.probe import TrainSettings, predict, train_linear_probe
from tessera.adapt.rotation import rotate_batch, rotation_trainer
from tessera.adapt.tent import Tent, TentSettings, norm_parameters
from tessera.adapt.test_time import TTTSettings


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_tent_updates_only_normalisation_affine_parameters(
    classifier: TTTClassifier, images: torch.Tensor
) -> None:
    before = _state(classifier)
    norm_names = {f"backbone.encoder.{n}" for n in norm_parameters(classifier.encoder)}
    assert norm_names and all(n.rsplit(".", 1)[-1] in ("weight", "bias") for n in norm_names)
    tent = Tent(classifier, TentSettings(lr=1e-1, steps=3, batch_size=3))
    probs = tent.run(images)
    assert probs.shape == (len(images), 10)
    after = classifier.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "TENT changed nothing"
    assert changed <= norm_names  # only LayerNorm weights and biases of the encoder
    tent.reset()
    assert all(torch.equal(before[k], classifier.state_dict()[k]) for k in before)


def test_normstat_uses_test_statistics_and_prior(classifier: TTTClassifier, images: torch.Tensor) -> None:
    assert has_batchnorm(classifier)
    frozen = predict(classifier, images)
    strong_prior = normstat_predict(classifier, images, prior_strength=1e9)
    torch.testing.assert_close(strong_prior, frozen, rtol=0, atol=1e-5)
    test_only = normstat_predict(classifier, images, prior_strength=0.0)
    assert not torch.allclose(test_only, frozen, atol=1e-3)
    # with the test statistics alone, the normalised features of the batch have mean 0
    feats = classifier.features(images).detach()
    normed = (feats - feats.mean(0)) / torch.sqrt(feats.var(0, unbiased=False) + classifier.head.bn.eps)
    torch.testing.assert_close(test_only, classifier.head.fc(normed).softmax(1).detach())


def test_rotation_ttt_episodic_restores_and_online_adapts(
    classifier: TTTClassifier, images: torch.Tensor
) -> None:
    rotated, labels = rotate_batch(images[:2])
    assert rotated.shape == (8, 3, 32, 32) and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(rotated[2], torch.rot90(images[0], 1, dims=(1, 2)))
    before = _state(classifier)
    settings = TTTSettings(steps=2, lr=1e-2)
    probs, losses = rotation_trainer(classifier, settings).run(images)
    assert probs.shape == (len(images), 10) and losses.shape == (len(images), 2)
    assert all(torch.equal(before[k], classifier.state_dict()[k]) for k in before)
    rotation_trainer(classifier, dataclasses.replace(settings, mode="online")).run(images)
    assert any(not torch.equal(before[k], classifier.state_dict()[k]) for k in before)


def test_knn_weighted_vote() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    probs = knn_probs(bank, labels, torch.tensor([[1.0, 0.05], [0.02, 1.0]]), num_classes=2, k=3)
    assert probs.argmax(1).tolist() == [0, 1]
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    # k=1 with T -> the nearest neighbour decides with certainty
    hard = knn_probs(bank, labels, torch.tensor([[0.6, 0.4]]), num_classes=2, k=1)
    assert hard.tolist() == [[1.0, 0.0]]


def test_linear_probe_on_digits_beats_chance_widely(trained_mae: torch.nn.Module) -> None:
    from tessera.models import registry

    x, y = digits_32(30)
    xt, yt = digits_32(10, offset=30)
    model = TTTClassifier(
        "mae_vit_micro_patch4", registry.config_of("mae_vit_micro_patch4"), 10, rotation_head=True
    )
    model.backbone.load_state_dict(trained_mae.state_dict())
    settings = TrainSettings(epochs=40, lr=1e-2, batch_size=64)
    train_linear_probe(model, as_tensor(x), torch.from_numpy(y), settings)
    acc = float((predict(model, as_tensor(xt)).argmax(1) == torch.from_numpy(yt)).float().mean())
    assert acc > 0.6, f"linear probe accuracy {acc:.2f} (chance 0.10)"


def test_wilson_interval_and_summary() -> None:
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert ci95_halfwidth(50, 100) == pytest.approx(0.0960, abs=1e-3)
    s = summarize(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]))
    assert s["accuracy"] == 0.75 and s["n"] == 4.0
    ci = binomtest(3, 4).proportion_ci(confidence_level=0.95, method="wilson")
    assert s["ci95"] == pytest.approx((ci.high - ci.low) / 2, abs=1e-12)  # 0.2954...


@pytest.mark.parametrize(
    ("k", "n"),
    [(0, 1), (1, 1), (0, 4), (3, 4), (4, 4), (0, 10), (8, 10), (10, 10), (1, 37), (50, 100), (999, 1000)],
)
def test_wilson_interval_equals_scipys(k: int, n: int) -> None:
    """Our Wilson interval against scipy's (no continuity correction), including k = 0 and k = n."""
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(k, n)
    # The same closed form, arranged differently: they differ by float rounding only (measured at
    # most 1.1e-16 over n <= 10000). 1e-12 is far below a real error: z = 1.96 instead of
    # 1.959964 already moves some bound of every case here by >= 1.4e-7.
    assert low == pytest.approx(ci.low, abs=1e-12) and high == pytest.approx(ci.high, abs=1e-12)
    assert ci95_halfwidth(k, n) == pytest.approx((ci.high - ci.low) / 2, abs=1e-12)
    if k == 0:
        assert low == 0.0
    if k == n:
        assert high == pytest.approx(1.0, abs=1e-15)


def test_stratified_subset_is_balanced_and_seeded() -> None:
    labels = np.repeat(np.arange(5), [10, 10, 10, 10, 2])
    sub = stratified_subset(labels, 20, seed=3)
    assert len(sub) == 20 and len(set(sub.tolist())) == 20
    counts = np.bincount(labels[sub], minlength=5)
    assert counts[4] == 2 and counts[:4].min() >= 4  # the short class is taken whole, the rest fill in
    assert np.array_equal(sub, stratified_subset(labels, 20, seed=3))
    assert not np.array_equal(sub, stratified_subset(labels, 20, seed=4))
    assert len(stratified_subset(labels, 0, seed=0)) == len(labels)
