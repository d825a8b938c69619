"""Data and corruption costs: `tessera data build` and `tessera data corrupt` at the demo size.

Usage: python bench/data_pipeline.py [--max-per-class 20] [--workers 2] [--out /tmp/tessera-bench-data]
Prints the build and corruption times, images per second, and the speed-up of the vectorised
clipped zoom (zoom blur, snow) over the reference's scipy.ndimage.zoom measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np

from tessera.corruptions import CORRUPTIONS
from tessera.corruptions.ops import clipped_zoom, clipped_zoom_reference
from tessera.corruptions.suite import corrupt_dataset
from tessera.data.embedded import build_embedded


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-per-class", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="/tmp/tessera-bench-data")
    args = p.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")

    t = time.perf_counter()
    manifest = build_embedded(out / "digits")
    build_s = time.perf_counter() - t
    print(f"build: {manifest['total']} images in {build_s:.1f} s")

    t = time.perf_counter()
    cm = corrupt_dataset(
        out / "digits",
        out / "digits-c",
        CORRUPTIONS,
        seed=0,
        max_per_class=args.max_per_class,
        workers=args.workers,
    )
    corrupt_s = time.perf_counter() - t
    print(
        f"corrupt: {cm['total']} images ({cm['images_per_cell']} per cell) in {corrupt_s:.1f} s "
        f"with {args.workers} workers"
    )

    x = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    reps = 2000
    t = time.perf_counter()
    for _ in range(reps):
        clipped_zoom_reference(x, 1.13)
    ref = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(reps):
        clipped_zoom(x, 1.13)
    fast = time.perf_counter() - t
    print(f"clipped zoom 32x32: scipy {ref / reps * 1e6:.0f} us, vectorised {fast / reps * 1e6:.0f} us")

    print(f"RESULT data_build_seconds {build_s:.2f} s")
    print(f"RESULT data_corrupt_seconds {corrupt_s:.2f} s")
    print(f"RESULT data_corrupt_images_per_second {cm['total'] / corrupt_s:.0f} img/s")
    print(f"RESULT clipped_zoom_speedup {ref / fast:.2f} x")


if __name__ == "__main__":
    main()
