"""The ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019) for large images, through
``imagecorruptions-imaug`` (a maintained fork of ``imagecorruptions`` that runs on numpy 2 and
needs no ImageMagick).

That package draws from numpy's global random state (and glass blur / impulse noise take a
``seed``); :func:`corrupt_imagenet` seeds both from the per-image seed and restores the global state
afterwards, so results are fixed by the seed and callers' random streams are left alone.
"""

from __future__ import annotations

import numpy as np

SEEDED = {"glass_blur", "impulse_noise"}  # functions of the package that take a seed argument


def corrupt_imagenet(x: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """Corrupt an (H, W, 3) uint8 image (H, W >= 32) with ImageNet-C parameters -> uint8, same shape."""
    from imagecorruptions import corrupt  # imports numba and OpenCV: only when needed

    state = np.random.get_state()
    try:
        np.random.seed(seed % 2**32)
        kwargs = {"seed": seed % 2**32} if name in SEEDED else {}
        out = corrupt(np.ascontiguousarray(x), severity=severity, corruption_name=name, **kwargs)
    finally:
        np.random.set_state(state)
    return np.asarray(out, dtype=np.uint8)[: x.shape[0], : x.shape[1]]
