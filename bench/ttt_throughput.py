"""Throughput of batched per-request TTT-MAE (torch.func vmap) against the per-sample loop.

Both paths run the same steps and copies on the same inputs with the same masks; the script prints
inputs/s of each at batch 1, 8 and 32, their ratio, the per-request latency (one request alone, and
the mean wait of a request in a batch of 32), and checks that the predictions agree.

    python bench/ttt_throughput.py [--arch mae_vit_mini_patch4] [--steps 5] [--copies 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from tessera.adapt.batched import adapt_batch
from tessera.adapt.heads import TTTClassifier
from tessera.adapt.test_time import TTTSettings
from tessera.adapt.ttt_mae import ttt_mae_trainer
from tessera.models import registry


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="mae_vit_mini_patch4")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--copies", type=int, default=8)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    torch.manual_seed(0)
    model = TTTClassifier(a.arch, registry.config_of(a.arch), num_classes=10).to(a.device).eval()
    settings = TTTSettings(steps=a.steps, copies=a.copies)
    print(f"arch {a.arch}, steps {a.steps}, copies {a.copies}, device {a.device},"
          f" threads {torch.get_num_threads()}")
    ratios = {}
    for b in [int(x) for x in a.batches.split(",")]:
        x = torch.rand(b, 3, 32, 32, device=a.device)
        adapt_batch(model, x[:1], steps=1, copies=a.copies)  # warm-up
        _sync(a.device)
        t0 = time.perf_counter()
        res = adapt_batch(model, x, steps=a.steps, copies=a.copies)
        _sync(a.device)
        t_batched = time.perf_counter() - t0
        trainer = ttt_mae_trainer(model, settings)
        trainer.run(x[:1])
        _sync(a.device)
        t0 = time.perf_counter()
        loop_probs, _ = trainer.run(x)
        _sync(a.device)
        t_loop = time.perf_counter() - t0
        diff = float((loop_probs - res.probs_after).abs().max())
        ratios[b] = t_loop / t_batched
        print(f"batch {b:3d}: batched {b / t_batched:8.2f} inputs/s  loop {b / t_loop:8.2f} inputs/s"
              f"  ratio {ratios[b]:.2f}x  latency batched {1000 * t_batched:.0f} ms/batch"
              f" loop {1000 * t_loop / b:.0f} ms/input  max|dp| {diff:.1e}")
    for b, r in ratios.items():
        print(f"RESULT ttt_batched_speedup_b{b} {r:.2f} x")
    single = [k for k in ratios if k == 1]
    if single:
        print(f"RESULT ttt_latency_single_request {1000 / (ratios[1] or 1):.0f} relative")


if __name__ == "__main__":
    main()
