"""Throughput of batched per-request TTT-MAE (stacked per-input weights) against the per-sample loop.

Both paths run the same steps and copies on the same inputs with the same masks; the script prints
inputs/s of each at batch 1, 8 and 32 (median of ``--repeats`` timed runs after a warm-up at the same
shapes), their ratio, the latency of a request (batched: the whole batch; loop: the mean wait in a
queue of that many inputs), and checks that the predictions agree. The batched path runs without its
optional diagnostics (``diagnostics=False``) so both paths do the same work.

    python bench/ttt_throughput.py [--arch mae_vit_mini_patch4] [--steps 5] [--copies 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from tessera.adapt.batched import adapt_batch
from tessera.adapt.heads import TTTClassifier
from tessera.adapt.test_time import TTTSettings
from tessera.adapt.ttt_mae import ttt_mae_trainer
from tessera.models import registry

T = TypeVar("T")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(device: str, fn: Callable[[], T]) -> tuple[float, T]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="mae_vit_mini_patch4")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--copies", type=int, default=8)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per path; the median is reported")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    torch.manual_seed(0)
    model = TTTClassifier(a.arch, registry.config_of(a.arch), num_classes=10).to(a.device).eval()
    settings = TTTSettings(steps=a.steps, copies=a.copies)
    print(
        f"arch {a.arch}, steps {a.steps}, copies {a.copies}, device {a.device},"
        f" threads {torch.get_num_threads()}"
    )
    ratios, latency = {}, {}
    for b in [int(x) for x in a.batches.split(",")]:
        x = torch.rand(b, 3, 32, 32, device=a.device)
        trainer = ttt_mae_trainer(model, settings)
        # warm-up at the measured shapes (allocator, kernels), then the median of `repeats` runs each
        adapt_batch(model, x, steps=1, copies=a.copies)
        trainer.run(x[:1])
        t_batched_runs, t_loop_runs = [], []
        for _ in range(a.repeats):
            t_batched, res = _timed(
                a.device,
                functools.partial(adapt_batch, model, x, steps=a.steps, copies=a.copies, diagnostics=False),
            )
            t_loop, (loop_probs, _) = _timed(a.device, functools.partial(trainer.run, x))
            t_batched_runs.append(t_batched)
            t_loop_runs.append(t_loop)
        t_batched, t_loop = statistics.median(t_batched_runs), statistics.median(t_loop_runs)
        diff = float((loop_probs - res.probs_after).abs().max())
        ratios[b] = t_loop / t_batched
        # a request's latency: batched, every request waits for the whole batch; loop, request i of a
        # queue of b waits for the i inputs before it and itself (mean: (b + 1) / 2 inputs)
        latency[b] = (1000 * t_batched, 1000 * t_loop / b * (b + 1) / 2)
        print(
            f"batch {b:3d}: batched {b / t_batched:8.2f} inputs/s  loop {b / t_loop:8.2f} inputs/s"
            f"  ratio {ratios[b]:.2f}x  latency batched {1000 * t_batched:.0f} ms/batch"
            f" loop {1000 * t_loop / b:.0f} ms/input  max|dp| {diff:.1e}"
        )
    for b, r in ratios.items():
        print(f"RESULT ttt_batched_speedup_b{b} {r:.2f} x")
    for b, (lat_batched, lat_loop) in latency.items():
        print(f"RESULT ttt_request_latency_b{b}_batched {lat_batched:.0f} ms")
        print(f"RESULT ttt_request_latency_b{b}_loop_mean {lat_loop:.0f} ms")


if __name__ == "__main__":
    main()
