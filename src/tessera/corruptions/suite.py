"""Build the corrupted copy of a data set's test split, ``<name>-c/<corruption>/<severity>/<class>/``
(the layout of CIFAR-10-C / ImageNet-C, Hendrycks & Dietterich 2019), with a manifest and a contact
sheet. Each (corruption, severity) cell is one unit of work; cells run in a few worker processes.
Every image's seed comes from :func:`tessera.corruptions.image_seed` (run seed, corruption,
severity, the image's index in the full sorted test split), so a subset or another worker count
gives the same pixels for the same image.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from tessera.corruptions import check_names, corrupt, image_seed, parameterisation
from tessera.corruptions.sheet import contact_sheet
from tessera.data.folder import IMAGE_SUFFIXES, read_rgb
from tessera.data.images import save_png
from tessera.data.manifest import sha256_bytes, staged_directory, write_manifest
from tessera.errors import DataError

Item = tuple[int, str, str]  # (index in the sorted test split, class, file stem)


def list_test_images(data_root: Path, max_per_class: int = 0) -> tuple[list[Item], list[np.ndarray]]:
    """The test images to corrupt: sorted per class, the first ``max_per_class`` of each (0 = all)."""
    test = data_root / "test"
    if not test.is_dir():
        raise DataError(f"{test} not found: build or import the data set first (tessera data build)")
    items: list[Item] = []
    arrays: list[np.ndarray] = []
    index = 0
    for class_dir in sorted(p for p in test.iterdir() if p.is_dir()):
        files = sorted(f for f in class_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for k, f in enumerate(files):
            if not max_per_class or k < max_per_class:
                items.append((index, class_dir.name, f.stem))
                arrays.append(read_rgb(f))
            index += 1
    if not items:
        raise DataError(f"no test images under {test}")
    return items, arrays


def _cell(args: tuple[Path, str, int, int, list[Item], list[np.ndarray]]) -> dict[str, str]:
    """Corrupt every image for one (corruption, severity); returns {relative path: sha256}."""
    staging, corruption, severity, seed, items, arrays = args
    files = {}
    for (index, cls, stem), x in zip(items, arrays, strict=True):
        out = corrupt(x, corruption, severity, image_seed(seed, corruption, severity, index))
        rel = f"{corruption}/{severity}/{cls}/{stem}.png"
        files[rel] = sha256_bytes(save_png(out, staging / rel))
    return files


def corrupt_dataset(
    data_root: str | Path,
    out_root: str | Path,
    corruptions: Sequence[str],
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    seed: int = 0,
    max_per_class: int = 0,
    workers: int = 1,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """Write ``out_root`` (replaced atomically) and return its manifest."""
    data_root, out_root = Path(data_root), Path(out_root)
    check_names(list(corruptions), list(severities))
    items, arrays = list_test_images(data_root, max_per_class)
    if out_root.exists() and any(out_root.iterdir()) and not (out_root / "manifest.json").exists():
        raise DataError(f"{out_root} exists and is not a corrupted set: move it or choose another name")
    with staged_directory(out_root) as staging:
        cells = [(staging, c, s, seed, items, arrays) for c in corruptions for s in severities]
        files: dict[str, str] = {}
        if workers > 1 and len(cells) > 1:
            ctx = multiprocessing.get_context(
                "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            )
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                for result in pool.map(_cell, cells):
                    files.update(result)
                    if progress:
                        progress(len(result))
        else:
            for cell in cells:
                result = _cell(cell)
                files.update(result)
                if progress:
                    progress(len(result))
        sheet = contact_sheet(arrays[0], list(corruptions), list(severities), seed, items[0][0])
        sheet_sha = sha256_bytes(save_png(sheet, staging / "contact_sheet.png"))
        classes = sorted({cls for _, cls, _ in items})
        manifest = {
            "schema": 1,
            "source": data_root.name,
            "split": "test",
            "parameterisation": parameterisation(arrays[0].shape),
            "corruptions": list(corruptions),
            "severities": list(severities),
            "seed": seed,
            "max_per_class": max_per_class,
            "images_per_cell": len(items),
            "classes": classes,
            "counts": {c: {str(s): len(items) for s in severities} for c in corruptions},
            "total": len(files),
            "contact_sheet": {"file": "contact_sheet.png", "sha256": sheet_sha},
            "files": dict(sorted(files.items())),
        }
        write_manifest(staging, manifest)
    return manifest
