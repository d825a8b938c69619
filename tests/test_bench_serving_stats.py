"""The serving benchmark's verdict on its target: the interval for the median of its rounds."""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "serving.py"
_spec = importlib.util.spec_from_file_location("bench_serving", _PATH)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_median_interval_uses_order_statistics_with_their_exact_coverage() -> None:
    xs = [0.76, 0.86, 0.87, 0.87, 0.90, 0.90, 0.90, 0.91, 0.96, 1.02, 1.03]  # run K, shuffled below
    random.Random(0).shuffle(xs)
    low, high, cover = bench.median_ci(xs)
    # n = 11: the 2nd smallest to the 2nd largest holds the median with 1 - 2 * 12 / 2048
    assert (low, high) == (0.86, 1.02)
    assert cover == pytest.approx(1 - 2 * 12 / 2048)
    # five rounds cannot reach 95%: the whole range, with the coverage it has (1 - 2/32)
    assert bench.median_ci([0.84, 0.82, 0.85, 0.81, 0.80]) == (0.80, 0.85, pytest.approx(1 - 2 / 32))
    assert bench.median_ci([0.9]) == (0.9, 0.9, 0.0)


def test_median_interval_covers_the_true_median_as_often_as_it_says() -> None:
    rng = random.Random(1)
    n, trials, hits = 11, 4000, 0
    for _ in range(trials):  # a skewed distribution whose median is 1
        low, high, cover = bench.median_ci([rng.expovariate(math.log(2)) for _ in range(n)])
        hits += low <= 1.0 <= high
    assert hits / trials == pytest.approx(cover, abs=0.01)


def test_verdict_says_undecided_while_the_interval_holds_the_target() -> None:
    assert bench.verdict(0.86, 1.02) == "met"
    assert bench.verdict(0.69, 0.95) == "undecided"
    assert bench.verdict(0.70, 0.84) == "not met"
    assert bench.verdict(0.85, 0.90) == "met"
    with pytest.raises(ValueError):
        bench.median_ci([])
