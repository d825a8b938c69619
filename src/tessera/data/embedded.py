"""The embedded default data set, built from real images that installed packages ship.

Labelled: scikit-learn's 1,797 handwritten digits (UCI optical recognition of handwritten digits;
8x8, 17 grey levels), rendered to ``image_size`` RGB with a seeded stratified split.
Unlabelled: square patches cut at seeded positions and scales from the photographs that the
scikit-learn and scikit-image wheels carry on disk. Files are read directly from the installed
packages; nothing is fetched (scikit-image's pooch-downloaded images are not used).
The build is deterministic: the bytes depend only on the parameters and the locked versions.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tessera.data.images import save_png
from tessera.data.manifest import make_manifest, sha256_bytes, staged_directory, write_manifest
from tessera.data.split import stratified_split
from tessera.errors import DataError

# (distribution, import package, file inside the package): real photographs shipped in the wheels.
PHOTO_SOURCES: tuple[tuple[str, str, str], ...] = (
    ("scikit-learn", "sklearn", "datasets/images/china.jpg"),
    ("scikit-learn", "sklearn", "datasets/images/flower.jpg"),
    ("scikit-image", "skimage", "data/astronaut.png"),
    ("scikit-image", "skimage", "data/chelsea.png"),
    ("scikit-image", "skimage", "data/coffee.png"),
    ("scikit-image", "skimage", "data/rocket.jpg"),
    ("scikit-image", "skimage", "data/motorcycle_left.png"),
    ("scikit-image", "skimage", "data/hubble_deep_field.jpg"),
    ("scikit-image", "skimage", "data/retina.jpg"),
    ("scikit-image", "skimage", "data/camera.png"),
    ("scikit-image", "skimage", "data/moon.png"),
    ("scikit-image", "skimage", "data/coins.png"),
    ("scikit-image", "skimage", "data/brick.png"),
    ("scikit-image", "skimage", "data/grass.png"),
    ("scikit-image", "skimage", "data/gravel.png"),
)
DIGITS_FILE = ("scikit-learn", "sklearn", "datasets/data/digits.csv.gz")


def package_file(package: str, rel: str) -> Path:
    """The path of ``rel`` inside the installed ``package`` (no import of the package needed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed: run make setup")
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed {package}: reinstall it (make setup)")
    return path


def render_digits(images: np.ndarray, size: int) -> np.ndarray:
    """(N, 8, 8) digits with values 0..16 -> (N, size, size, 3) uint8, white strokes on black."""
    grey = np.rint(np.asarray(images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    out = np.empty((len(grey), size, size, 3), dtype=np.uint8)
    for i, g in enumerate(grey):
        big = Image.fromarray(g, mode="L").resize((size, size), Image.Resampling.BICUBIC)
        out[i] = np.asarray(big, dtype=np.uint8)[..., None]  # (size, size) -> broadcast to RGB
    return out


def load_digits_rendered(size: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits rendered to ``size`` px: (images (N, size, size, 3) uint8, labels (N,))."""
    from sklearn.datasets import load_digits  # reads digits.csv.gz shipped in the wheel

    digits = load_digits()
    return render_digits(digits.images, size), np.asarray(digits.target)


def cut_patches(count: int, size: int, seed: int) -> tuple[list[np.ndarray], list[str], list[int]]:
    """``count`` patches (size x size x 3 uint8), round-robin over :data:`PHOTO_SOURCES`.

    Patch ``k`` uses a generator seeded by ``(seed, k)``: a side between ``size`` and ``4 * size``
    (capped by the photo), a uniform position, then a bicubic resize to ``size``.
    Returns the patches, their source stems and each source's index.
    """
    photos = []
    for _, package, rel in PHOTO_SOURCES:
        with Image.open(package_file(package, rel)) as im:
            photos.append(im.convert("RGB"))
    patches, stems, which = [], [], []
    for k in range(count):
        j = k % len(photos)
        photo = photos[j]
        w, h = photo.size
        rng = np.random.default_rng([seed, k])
        side = int(rng.integers(size, min(4 * size, w, h) + 1))
        left = int(rng.integers(0, w - side + 1))
        top = int(rng.integers(0, h - side + 1))
        crop = photo.crop((left, top, left + side, top + side))
        if side != size:
            crop = crop.resize((size, size), Image.Resampling.BICUBIC)
        patches.append(np.asarray(crop, dtype=np.uint8))
        stems.append(Path(PHOTO_SOURCES[j][2]).stem)
        which.append(j)
    return patches, stems, which


def _version(dist: str) -> str:
    return importlib.metadata.version(dist)


def build_embedded(
    out_dir: str | Path,
    *,
    name: str = "digits",
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    image_size: int = 32,
    unlabeled_patches: int = 2000,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """Write the embedded data set to ``out_dir`` (replaced atomically) and return its manifest."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").exists():
        raise DataError(f"{out_dir} exists and is not a Tessera data set: choose another name or move it")
    with staged_directory(out_dir) as staging:
        files: dict[str, str] = {}
        images, labels = load_digits_rendered(image_size)
        splits = stratified_split(labels.tolist(), fractions, seed)
        for i, (img, label, split) in enumerate(zip(images, labels, splits, strict=True)):
            rel = f"{split}/{int(label)}/digit-{i:04d}.png"
            files[rel] = sha256_bytes(save_png(img, staging / rel))
            if progress:
                progress(1)
        patches, stems, which = cut_patches(unlabeled_patches, image_size, seed)
        per_source = np.bincount(np.asarray(which, dtype=np.int64), minlength=len(PHOTO_SOURCES))
        for k, (patch, stem) in enumerate(zip(patches, stems, strict=True)):
            rel = f"unlabeled/{stem}-{k:05d}.png"
            files[rel] = sha256_bytes(save_png(patch, staging / rel))
            if progress:
                progress(1)
        provenance = [
            {
                "package": DIGITS_FILE[0],
                "version": _version(DIGITS_FILE[0]),
                "file": f"{DIGITS_FILE[1]}/{DIGITS_FILE[2]}",
                "use": "labelled digits",
                "images": len(images),
            }
        ]
        provenance += [
            {
                "package": dist,
                "version": _version(dist),
                "file": f"{pkg}/{rel}",
                "use": "unlabelled patches",
                "images": int(per_source[j]),
            }
            for j, (dist, pkg, rel) in enumerate(PHOTO_SOURCES)
            if per_source[j]
        ]
        params = {
            "seed": seed,
            "split": list(fractions),
            "image_size": image_size,
            "unlabeled_patches": unlabeled_patches,
        }
        manifest = make_manifest(name, files, provenance, image_size, params)
        write_manifest(staging, manifest)
    return manifest
