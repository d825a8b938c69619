"""The paired bootstrap by source image: right coverage, and wider than an item-level bootstrap
when the same images repeat across cells (as they do over corruptions x severities)."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.adapt.stats import iid_gain, paired_gain

TRUE_GAIN = 0.8 * (0.3 - 0.1)  # see _episode


def _episode(rng: np.random.Generator, images: int = 60, cells: int = 10) -> tuple[np.ndarray, ...]:
    """Each image helps (+1, p=.3), hurts (-1, p=.1) or is indifferent; each of its cells shows that
    effect with p=.8 (else both arms agree). E[method - frozen] = 0.8 * (0.3 - 0.1) = 0.16."""
    effect = rng.choice([1, -1, 0], size=images, p=[0.3, 0.1, 0.6])
    shows = rng.random((images, cells)) < 0.8
    diff = (effect[:, None] * shows).ravel()  # (images * cells,)
    frozen = np.where(diff == 1, 0, np.where(diff == -1, 1, rng.random(diff.size) < 0.5))
    method = frozen + diff
    groups = np.repeat(np.arange(images), cells).astype(str)
    return method.astype(bool), frozen.astype(bool), groups


def test_gain_is_the_paired_mean_and_identical_arms_give_zero() -> None:
    method = np.array([1, 1, 0, 1, 0, 1], dtype=bool)
    frozen = np.array([1, 0, 0, 0, 1, 1], dtype=bool)
    g = paired_gain(method, frozen, ["a", "a", "b", "b", "c", "c"], n_boot=500)
    assert g.gain == pytest.approx(1 / 6) and g.images == 3 and g.items == 6
    assert g.low <= g.gain <= g.high
    same = paired_gain(frozen, frozen, ["a", "a", "b", "b", "c", "c"])
    assert (same.gain, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="one entry per item"):
        paired_gain(method, frozen, ["a"])


def test_paired_interval_covers_a_known_gain_at_its_stated_rate() -> None:
    """200 synthetic evaluations (seed 0), 60 images x 10 cells each, 1000 resamples: the 95%
    interval must cover the true gain in 88-99% of them (binomial sd of the estimate ~1.5 points)."""
    rng = np.random.default_rng(0)
    reps = 200
    covered = 0
    for rep in range(reps):
        method, frozen, groups = _episode(rng)
        g = paired_gain(method, frozen, groups, n_boot=1000, seed=rep)
        covered += g.low <= TRUE_GAIN <= g.high
    assert 0.88 <= covered / reps <= 0.99, covered / reps


def test_paired_interval_is_wider_than_the_iid_one_when_images_repeat() -> None:
    rng = np.random.default_rng(1)
    ratios, iid_covered = [], 0
    for rep in range(50):
        method, frozen, groups = _episode(rng)
        paired = paired_gain(method, frozen, groups, n_boot=1000, seed=rep)
        iid = iid_gain(method, frozen, n_boot=1000, seed=rep)
        assert paired.gain == pytest.approx(iid.gain)
        ratios.append((paired.high - paired.low) / (iid.high - iid.low))
        iid_covered += iid.low <= TRUE_GAIN <= iid.high
    assert np.median(ratios) > 1.5  # 10 correlated cells per image are not 10 trials
    assert iid_covered / 50 < 0.85  # and the item-level interval undercovers
