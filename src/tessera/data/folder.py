"""Read Tessera's image-folder layout into tensors.

Layout: ``<root>/<split>/<class>/<id>.png`` for labelled splits (train, val, test),
``<root>/unlabeled/<id>.png`` for the unlabelled pool, ``<root>/manifest.json`` beside them.
Corrupted sets: ``<root>-c/<corruption>/<severity>/<class>/<id>.png``.
Images are returned as float tensors in [0, 1], (N, 3, H, W): every model in Tessera takes that.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tessera.errors import DataError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def list_classes(split_dir: Path) -> list[str]:
    """Sorted class folder names under ``split_dir``."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir())


def read_rgb(path: Path) -> np.ndarray:
    """One image file -> (H, W, 3) uint8."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    """A list of (H, W, 3) uint8 arrays -> (N, 3, H, W) float32 in [0, 1]."""
    if not arrays:
        return torch.empty(0, 3, 0, 0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)


def load_labeled(
    split_dir: str | Path, classes: list[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every image under ``split_dir/<class>/`` -> (images, labels, classes).

    ``classes`` fixes the label order (e.g. the training split's); by default the sorted folders.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"{split_dir} not found: build or import the data first (tessera data build)")
    classes = classes if classes is not None else list_classes(split_dir)
    arrays, labels = [], []
    for idx, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        for f in sorted(class_dir.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                arrays.append(read_rgb(f))
                labels.append(idx)
    if not arrays:
        raise DataError(f"no images under {split_dir}")
    return to_tensor(arrays), torch.tensor(labels, dtype=torch.long), classes


def load_split(
    root: str | Path, split: str, classes: list[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``load_labeled(root / split)`` with the training split's class order by default."""
    root = Path(root)
    if classes is None and (root / "train").is_dir():
        classes = list_classes(root / "train")
    return load_labeled(root / split, classes)


def load_unlabeled(root: str | Path) -> torch.Tensor:
    """The unlabelled pool ``root/unlabeled/*`` -> (N, 3, H, W); empty if there is none."""
    pool = Path(root) / "unlabeled"
    if not pool.is_dir():
        return torch.empty(0, 3, 0, 0)
    files = sorted(f for f in pool.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    return to_tensor([read_rgb(f) for f in files])


def load_pretraining_images(root: str | Path) -> torch.Tensor:
    """Images for self-supervised pretraining: the train split (labels unused) + the unlabelled pool.

    A pool-only data set (a flat folder imported with ``tessera data import``) pretrains on its pool:
    self-supervised pretraining and the generator need no labels.
    """
    root = Path(root)
    pool = load_unlabeled(root)
    if not (root / "train").is_dir():
        if pool.shape[0]:
            return pool
        raise DataError(
            f"{root}/train not found, and no unlabelled pool ({root}/unlabeled): build or import the"
            " data first (`tessera data build`, `tessera data import FOLDER --name NAME`)"
        )
    train, _, _ = load_split(root, "train")
    if pool.numel() and pool.shape[-2:] == train.shape[-2:]:
        return torch.cat([train, pool])
    return train
