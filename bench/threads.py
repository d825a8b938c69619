"""Torch intra-op threads: 1 vs 2 on one MAE pretraining step, idle and beside a busy process.

In one process, ``--rounds`` rounds each time ``--steps`` pretraining steps (forward, backward, AdamW)
of the same model on the same batch and masks at 1 thread and at 2 threads, in alternating order
(1-2, 2-1, ...), once on the machine as it is ("idle") and once while a subprocess spins a CPU loop
("loaded"); the two conditions also alternate their order. Each round gives the ratio
2-thread time / 1-thread time (below 1: two threads are faster); the script prints every round, the
median and min-max per condition, and the load average. ``tessera.threads.choose`` is fixed to what
these figures say (bench/RESULTS.md, "Torch threads").

    python bench/threads.py [--arch mae_vit_mini_patch4] [--batch 64] [--rounds 6] [--steps 3]

Run it without ``OMP_NUM_THREADS`` (the script sets the threads itself).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch

from tessera.models import registry


@contextlib.contextmanager
def busy(on: bool) -> Iterator[None]:
    """A subprocess spinning a CPU loop while the block runs (nothing when ``on`` is False)."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it start spinning
        yield
    finally:
        proc.kill()
        proc.wait()


def make_step(arch: str, batch: int, mask_ratio: float) -> Callable[[], float]:
    """One MAE pretraining step on a fixed batch and fixed masks; returns the loss."""
    torch.manual_seed(0)
    model = registry.build(arch).train()
    size = int(model.encoder.img_size)
    imgs = torch.rand(batch, 3, size, size)
    patches = (size // int(model.encoder.patch_size)) ** 2
    noise = torch.rand(batch, patches)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss, _, _ = model(imgs, mask_ratio, noise)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def timed(step: Callable[[], float], threads: int, steps: int) -> float:
    """Seconds per step at ``threads`` intra-op threads (mean of ``steps``)."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def summary(ratios: list[float]) -> str:
    return f"median {statistics.median(ratios):.2f}, min {min(ratios):.2f}, max {max(ratios):.2f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="mae_vit_mini_patch4")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds per condition")
    p.add_argument("--steps", type=int, default=3, help="timed steps per thread count per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per thread count first")
    a = p.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS"):
        print(f"note: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} is set; the script sets threads itself")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    step = make_step(a.arch, a.batch, a.mask_ratio)
    for threads in (1, 2):
        timed(step, threads, a.warmup)
    load0 = os.getloadavg()[0]
    print(f"arch {a.arch}, batch {a.batch}, {a.steps} steps per timing, {cores} cores, load {load0:.2f}")
    ratios: dict[str, list[float]] = {"idle": [], "loaded": []}
    for r in range(a.rounds):
        conditions = ("idle", "loaded") if r % 2 == 0 else ("loaded", "idle")
        for cond in conditions:
            order = (1, 2) if (r + (cond == "loaded")) % 2 == 0 else (2, 1)
            with busy(cond == "loaded"):
                secs = {t: timed(step, t, a.steps) for t in order}
            ratio = secs[2] / secs[1]
            ratios[cond].append(ratio)
            print(
                f"round {r + 1} {cond:6s} order {order[0]}-{order[1]}: 1 thread {secs[1] * 1000:7.1f} ms,"
                f" 2 threads {secs[2] * 1000:7.1f} ms, 2/1 {ratio:.2f}  (load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    for cond, values in ratios.items():
        print(f"{cond}: 2-thread / 1-thread time per step: {summary(values)}")
    print(f"RESULT threads_2v1_idle {statistics.median(ratios['idle']):.2f} ratio")
    print(f"RESULT threads_2v1_loaded {statistics.median(ratios['loaded']):.2f} ratio")


if __name__ == "__main__":
    main()
