"""Paired gains over the frozen model, with a bootstrap interval resampled by source image.

A corrupted evaluation shows the same source image many times (once per corruption x severity
cell), and every method sees the same images. So the unit of evidence is the source image, not the
cell: two cells of one image are not two independent trials. :func:`paired_gain` takes, for every
scored item, whether the method and the frozen model got it right and which source image it came
from, and resamples whole source images with replacement (a cluster bootstrap, Efron & Tibshirani
1993, ch. 14), keeping each item's method and frozen outcome together (paired). Its percentile
interval is what a policy decision may rest on; :func:`iid_gain` resamples items as if they were
independent, only to show how much narrower that would (wrongly) be. :func:`median_ci`, the
distribution-free interval for a median of rounds, is what the benchmarks' verdicts rest on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Gain:
    """Mean of (method correct - frozen correct) over items, with its bootstrap interval."""

    gain: float
    low: float
    high: float
    images: int  # distinct source images
    items: int  # scored items (images x cells)

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def _prepare(method: Sequence[bool] | np.ndarray, frozen: Sequence[bool] | np.ndarray) -> np.ndarray:
    m = np.asarray(method, dtype=np.float64)
    f = np.asarray(frozen, dtype=np.float64)
    if m.shape != f.shape or m.ndim != 1:
        raise ValueError(f"method and frozen outcomes must be equal-length vectors, got {m.shape}, {f.shape}")
    return m - f  # (n,) in {-1, 0, 1}


def paired_gain(
    method: Sequence[bool] | np.ndarray,
    frozen: Sequence[bool] | np.ndarray,
    groups: Sequence[str] | np.ndarray,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Gain:
    """The paired gain and its percentile interval, resampling source images (``groups``).

    Args:
        method, frozen: (n,) whether the method / the frozen model classified item i correctly.
        groups: (n,) the source image of item i (items of one image share a value).
    """
    diff = _prepare(method, frozen)
    groups = np.asarray(groups)
    if groups.shape != diff.shape:
        raise ValueError(f"groups must have one entry per item, got {groups.shape} for {diff.shape}")
    if diff.size == 0:
        return Gain(0.0, 0.0, 0.0, 0, 0)
    _, inverse = np.unique(groups, return_inverse=True)
    k = int(inverse.max()) + 1
    sums = np.bincount(inverse, weights=diff, minlength=k)  # (k,) per image
    counts = np.bincount(inverse, minlength=k).astype(np.float64)  # (k,)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, k, size=(n_boot, k))  # (B, k) images drawn with replacement
    boot = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)  # (B,) ratio estimator per resample
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return Gain(float(diff.mean()), float(low), float(high), k, int(diff.size))


def iid_gain(
    method: Sequence[bool] | np.ndarray,
    frozen: Sequence[bool] | np.ndarray,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Gain:
    """The same gain with items resampled as if independent (overstates the evidence when images
    repeat across cells; kept for comparison and for sets where every item is its own image)."""
    diff = _prepare(method, frozen)
    if diff.size == 0:
        return Gain(0.0, 0.0, 0.0, 0, 0)
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, diff.size, size=(n_boot, diff.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return Gain(float(diff.mean()), float(low), float(high), int(diff.size), int(diff.size))


class Outcomes:
    """Who got which corrupted item right, item by item, with its source image and corruption.

    ``add_cell(corruption, ids)`` opens a cell (the same ``ids`` for every method, in order), then
    ``add(method, correct)`` records each method's (n,) outcomes on it.
    """

    def __init__(self, methods: Sequence[str]) -> None:
        self.methods = list(methods)
        self.ids: list[str] = []
        self.corruptions: list[str] = []
        self.correct: dict[str, list[bool]] = {m: [] for m in self.methods}

    def add_cell(self, corruption: str, ids: Sequence[str]) -> None:
        self.ids += list(ids)
        self.corruptions += [corruption] * len(ids)

    def add(self, method: str, correct: Sequence[bool] | np.ndarray | object) -> None:
        values = np.asarray(correct, dtype=bool).reshape(-1).tolist()
        self.correct[method] += values
        if len(self.correct[method]) > len(self.ids):
            raise ValueError(f"{method}: more outcomes than items; call add_cell first")

    def gain(self, method: str, corruptions: Sequence[str], *, n_boot: int = 2000, seed: int = 0) -> Gain:
        """:func:`paired_gain` of ``method`` over ``frozen`` on the items of ``corruptions``."""
        keep = np.isin(np.asarray(self.corruptions), list(corruptions))
        m = np.asarray(self.correct[method], dtype=bool)[keep]
        f = np.asarray(self.correct["frozen"], dtype=bool)[keep]
        return paired_gain(m, f, np.asarray(self.ids)[keep], n_boot=n_boot, seed=seed)


def median_ci(xs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free interval for the median of ``xs``: (low, high, its exact coverage).

    The interval between the k-th smallest and the k-th largest value holds the median with
    probability 1 - 2 P(Binomial(n, 1/2) < k), whatever the distribution; k is the largest for which
    that is at least ``level``. With too few values for ``level`` (5 give at most 93.8%) it is the
    whole range with the coverage it has.
    """
    xs, n = sorted(xs), len(xs)
    if n == 0:
        raise ValueError("no values")

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return xs[k - 1], xs[n - k], coverage(k)
