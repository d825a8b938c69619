"""Common corruptions at five severities (Hendrycks & Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", ICLR 2019).

:func:`corrupt` applies one corruption to one (H, W, 3) uint8 image: images up to
:data:`SMALL_MAX_SIDE` px get the CIFAR-10-C parameters (:mod:`tessera.corruptions.cifar`), larger
ones the ImageNet-C parameters (:mod:`tessera.corruptions.imagenet`, via imagecorruptions-imaug).
Output is uint8 of the input's shape, fixed by ``seed``; :func:`image_seed` derives one seed per
(corruption, severity, image) from a run seed.
"""

from __future__ import annotations

import numpy as np

from tessera.errors import DataError
from tessera.names import ALL_CORRUPTIONS, CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES

SMALL_MAX_SIDE = 64  # up to this size: CIFAR-10-C parameters; above: ImageNet-C


def parameterisation(shape: tuple[int, ...]) -> str:
    """``"cifar10-c"`` or ``"imagenet-c"``: which published parameters an image of ``shape`` gets."""
    return "cifar10-c" if max(shape[:2]) <= SMALL_MAX_SIDE else "imagenet-c"


def image_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """A 32-bit seed for one image, from the run ``seed``, the corruption, severity and image index."""
    ss = np.random.SeedSequence([seed, ALL_CORRUPTIONS.index(corruption), severity, index])
    return int(ss.generate_state(1)[0])


def check_names(corruptions: list[str] | tuple[str, ...], severities: list[int] | tuple[int, ...]) -> None:
    """:class:`DataError` naming any unknown corruption or severity."""
    unknown = [c for c in corruptions if c not in ALL_CORRUPTIONS]
    if unknown:
        raise DataError(f"unknown corruption(s) {unknown}; known: {list(ALL_CORRUPTIONS)}")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise DataError(f"severity {bad} out of range: severities are 1 to 5")


def corrupt(image: np.ndarray, corruption: str, severity: int, seed: int = 0) -> np.ndarray:
    """Apply ``corruption`` at ``severity`` (1-5) to an (H, W, 3) uint8 image -> uint8, same shape."""
    check_names([corruption], [severity])
    x = np.asarray(image)
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
        raise DataError(f"corrupt() takes an (H, W, 3) uint8 image, got {x.dtype} {x.shape}")
    if min(x.shape[:2]) < 32:
        raise DataError(f"images must be at least 32x32 to corrupt, got {x.shape[1]}x{x.shape[0]}")
    if parameterisation(x.shape) == "cifar10-c":
        from tessera.corruptions.cifar import FUNCTIONS

        rng = np.random.RandomState(seed % 2**32)
        out = FUNCTIONS[corruption](x, severity, rng)
        # np.uint8 truncation after clipping, as the reference's np.uint8(corruption(img))
        return np.clip(out, 0, 255).astype(np.uint8)
    from tessera.corruptions.imagenet import corrupt_imagenet

    return corrupt_imagenet(x, corruption, severity, seed)


__all__ = [
    "ALL_CORRUPTIONS",
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "SEVERITIES",
    "check_names",
    "corrupt",
    "image_seed",
    "parameterisation",
]
