"""Accuracy with a 95% confidence interval, and seeded stratified subsets of evaluation cells.

The interval is Wilson's score interval (Wilson 1927), which stays inside [0, 1] and is sensible for
the small per-cell samples that expensive methods (TTT) are evaluated on; its half-width is reported
as ``ci95``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

Z95 = 1.959963984540054


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``pred == labels`` (both (N,) integer tensors); 0.0 for an empty set."""
    if labels.numel() == 0:
        return 0.0
    return float((pred.cpu() == labels.cpu()).float().mean())


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``correct / n`` -> (low, high)."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def ci95_halfwidth(correct: int, n: int) -> float:
    """Half the width of the 95% Wilson interval."""
    low, high = wilson_interval(correct, n)
    return (high - low) / 2.0


def summarize(pred: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """-> ``{"accuracy", "n", "ci95"}`` for one evaluation cell."""
    n = int(labels.numel())
    correct = int((pred.cpu() == labels.cpu()).sum()) if n else 0
    return {"accuracy": correct / n if n else 0.0, "n": float(n), "ci95": ci95_halfwidth(correct, n)}


def stratified_subset(labels: Sequence[int] | np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of ``size`` items, spread evenly over the classes.

    ``size <= 0`` or ``size >= len(labels)`` keeps everything. Each class gets ``size // K`` items
    (the remainder goes to randomly chosen classes), fewer where a class has fewer items, the
    shortfall being filled from the other classes. The same (labels, size, seed) gives the same subset.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if size <= 0 or size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    quota = {c: size // len(classes) for c in classes}
    for c in rng.permutation(classes)[: size % len(classes)]:
        quota[c] += 1
    chosen = [pools[c][: quota[c]] for c in classes]
    leftover = np.concatenate([pools[c][quota[c] :] for c in classes])
    missing = size - sum(len(c) for c in chosen)
    if missing > 0:
        chosen.append(rng.permutation(leftover)[:missing])
    return np.sort(np.concatenate(chosen))
