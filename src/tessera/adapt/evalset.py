"""Evaluation sets: the clean test split and the cells (corruption x severity) of a corrupted set.

Layout (docs/CONTRACTS.md): ``data/<name>/test/<class>/<id>.png`` and
``data/<name>-c/<corruption>/<severity>/<class>/<id>.png``. Expensive methods are evaluated on a
seeded stratified subset of every cell (:func:`tessera.adapt.metrics.stratified_subset`); only the
chosen files are read, so a small subset of a large corrupted set loads in moments. The order of a
subset is shuffled with the same seed, so online methods do not see the classes one after another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tessera.adapt.metrics import stratified_subset
from tessera.data.folder import IMAGE_SUFFIXES, list_classes, read_rgb, to_tensor
from tessera.errors import DataError


@dataclass(frozen=True)
class Cell:
    """One corruption at one severity."""

    corruption: str
    severity: str


def fit_size(images: torch.Tensor, img_size: int) -> torch.Tensor:
    """Resize (N, 3, H, W) images in [0, 1] to the model's square input size if they differ."""
    if images.numel() == 0 or tuple(images.shape[-2:]) == (img_size, img_size):
        return images
    out = F.interpolate(images, size=(img_size, img_size), mode="bicubic", antialias=True)
    return out.clamp_(0.0, 1.0)


def data_name(corrupted_root: str | Path) -> str:
    """``data/digits-c`` -> ``digits`` (the name ``tessera data corrupt --name`` takes)."""
    name = Path(corrupted_root).name
    return name[:-2] if name.endswith("-c") else name


def list_labeled_files(split_dir: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """Image files under ``split_dir/<class>/`` and their labels in the order of ``classes``."""
    files, labels = [], []
    for idx, name in enumerate(classes):
        class_dir = split_dir / name
        if class_dir.is_dir():
            for f in sorted(class_dir.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(f)
                    labels.append(idx)
    return files, np.asarray(labels, dtype=np.int64)


def check_classes(split_dir: Path, classes: list[str]) -> None:
    """Raise :class:`DataError` if ``split_dir`` holds classes the classifier does not know."""
    found = list_classes(split_dir)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"{split_dir} holds classes {unknown} that the classifier does not know (it knows {classes}):"
            " re-run `tessera adapt` on this data set, or evaluate on the one the classifier was made for"
        )


def load_subset(
    split_dir: str | Path, classes: list[str], size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded stratified subset of ``size`` images (0: all) of ``split_dir``, shuffled.

    Returns images (n, 3, H, W) in [0, 1] and labels (n,).
    """
    images, labels, _ = load_subset_with_ids(split_dir, classes, size, seed)
    return images, labels


def load_subset_with_ids(
    split_dir: str | Path, classes: list[str], size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """:func:`load_subset` plus each image's id, ``<class>/<file>``: the source test image, the same
    in every cell of a corrupted set (the unit a paired bootstrap resamples)."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"{split_dir} not found: build the data first (`tessera data build`)")
    check_classes(split_dir, classes)
    files, labels = list_labeled_files(split_dir, classes)
    if not files:
        raise DataError(f"no images under {split_dir}")
    keep = stratified_subset(labels, size, seed)
    keep = keep[np.random.default_rng(seed).permutation(len(keep))]
    images = to_tensor([read_rgb(files[i]) for i in keep])
    ids = [f"{files[i].parent.name}/{files[i].name}" for i in keep]
    return images, torch.from_numpy(labels[keep]), ids


def corrupted_cells(
    root: str | Path, corruptions: tuple[str, ...] = (), severities: tuple[int, ...] = ()
) -> list[Cell]:
    """The cells of the corrupted set at ``root``, optionally restricted; sorted.

    Raises:
        DataError: the set is missing or empty, or a requested corruption/severity is absent; the
            message names the command that makes it.
    """
    root = Path(root)
    make = f"run `tessera data corrupt --name {data_name(root)}`"
    if not root.is_dir():
        raise DataError(f"corrupted set {root} not found: {make} (after `tessera data build`)")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    missing = sorted(set(corruptions) - set(found))
    if missing:
        raise DataError(f"corruption(s) {missing} not in {root} (it has {found}): {make} with them")
    cells: list[Cell] = []
    for c in corruptions or tuple(found):
        sev_found = sorted((p.name for p in (root / c).iterdir() if p.is_dir()), key=_sev_key)
        wanted = [str(s) for s in severities] if severities else sev_found
        absent = sorted(set(wanted) - set(sev_found))
        if absent:
            raise DataError(f"severity {absent} of {c!r} not in {root} (it has {sev_found}): {make}")
        cells.extend(Cell(c, s) for s in wanted)
    if not cells:
        raise DataError(f"corrupted set {root} is empty: {make}")
    return cells


def _sev_key(name: str) -> tuple[int, str]:
    return (int(name), name) if name.isdigit() else (10**9, name)
