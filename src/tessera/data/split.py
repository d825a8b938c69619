"""A seeded, stratified train/val/test split that depends only on the seed and the item order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tessera.errors import DataError
from tessera.names import DEFAULT_SPLIT  # noqa: F401  (re-exported: the one default split)

SPLIT_NAMES = ("train", "val", "test")


def parse_fractions(text: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` or a sequence -> three fractions that sum to 1."""
    values = [float(v) for v in text.split(",")] if isinstance(text, str) else [float(v) for v in text]
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise DataError(
            f"split fractions {text!r}: give three non-negative numbers summing to 1, "
            "e.g. 0.8,0.1,0.1 (train, val, test)"
        )
    return values[0], values[1], values[2]


def stratified_split(labels: Sequence[str | int], fractions: Sequence[float], seed: int) -> list[str]:
    """The split name of every item, stratified by label.

    Per class, items are shuffled with a generator seeded by ``seed`` and the class's rank, then
    cut into val and test by rounding the fractions; train takes the rest and at least one item.
    """
    f_train, f_val, f_test = parse_fractions(list(fractions))
    out = [""] * len(labels)
    for rank, label in enumerate(sorted(set(labels), key=str)):
        idx = np.array([i for i, lab in enumerate(labels) if lab == label])
        rng = np.random.default_rng([seed, rank])
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        n_val = int(round(n * f_val))
        n_test = int(round(n * f_test))
        while n_val + n_test > max(n - 1, 0) and (n_val or n_test):
            if n_test >= n_val and n_test:
                n_test -= 1
            else:
                n_val -= 1
        if f_train == 0.0:
            n_test = n - n_val
        for i in idx[:n_val]:
            out[i] = "val"
        for i in idx[n_val : n_val + n_test]:
            out[i] = "test"
        for i in idx[n_val + n_test :]:
            out[i] = "train"
    return out
