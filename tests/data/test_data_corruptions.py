"""The corruption suite: shape, dtype and determinism of every corruption at every severity, distance
from the clean image growing with severity (with the exceptions the published parameters imply),
the fast zoom against scipy's, and the ImageNet-C path for large images."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.corruptions import (
    ALL_CORRUPTIONS,
    CORRUPTIONS,
    SEVERITIES,
    corrupt,
    image_seed,
    parameterisation,
)
from tessera.corruptions.ops import clipped_zoom, clipped_zoom_reference
from tessera.data.embedded import cut_patches, load_digits_rendered
from tessera.errors import DataError

# Severity pairs (s, s + 1) where the mean PSNR may rise: the CIFAR-10-C parameters
# (hendrycks/robustness make_cifar_c.py) are not monotone in pixel distance there.
NON_MONOTONE: dict[str, set[tuple[int, int]]] = {
    # sigma 0.05, 0.25, 0.4, 0.25, 0.4 with 1, 1, 1, 2, 2 iterations: more smoothing of the shuffled
    # pixels brings them closer to the clean image (CIFAR-10-C's glass blur is not monotone).
    "glass_blur": {(1, 2), (2, 3), (4, 5)},
    # severities 3 and 4 share sigma 2; the wider radius only adds taps of weight < exp(-18).
    "motion_blur": {(3, 4)},
    # frost weight 0.4 at both 3 and 4; only the image weight drops 0.9 -> 0.85.
    "frost": {(3, 4)},
    # the affine jitter shrinks (0.08 -> 0.03 of the size) while the elastic part grows.
    "elastic_transform": {(1, 2), (2, 3), (3, 4), (4, 5)},
    # int(32 * 0.9) = 28 vs int(32 * 0.85) = 27 px: box resampling ratios, not monotone.
    "pixelate": {(2, 3)},
    # extras: severity 4 switches from water drops to mud; saturate first desaturates (0.3, 0.1)
    # then saturates (1.5, 2, 2.5).
    "spatter": {(3, 4)},
    "saturate": {(1, 2), (2, 3)},
}


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """One digit of each class and six photo patches, 32x32 RGB uint8."""
    imgs, labels = load_digits_rendered(32)
    digits = [imgs[int(np.flatnonzero(labels == d)[0])] for d in range(10)]
    return digits + cut_patches(6, 32, seed=0)[0]


@pytest.fixture(scope="module")
def outputs(images: list[np.ndarray]) -> dict[tuple[str, int], list[np.ndarray]]:
    return {
        (c, s): [corrupt(x, c, s, image_seed(0, c, s, i)) for i, x in enumerate(images)]
        for c in ALL_CORRUPTIONS
        for s in SEVERITIES
    }


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def test_fifteen_standard_and_four_extras() -> None:
    assert len(CORRUPTIONS) == 15 and len(ALL_CORRUPTIONS) == 19
    assert parameterisation((32, 32, 3)) == "cifar10-c" and parameterisation((224, 224, 3)) == "imagenet-c"


@pytest.mark.parametrize("corruption", ALL_CORRUPTIONS)
def test_shape_dtype_and_determinism(
    corruption: str, images: list[np.ndarray], outputs: dict[tuple[str, int], list[np.ndarray]]
) -> None:
    for s in SEVERITIES:
        for i, (x, y) in enumerate(zip(images[:4], outputs[(corruption, s)][:4], strict=True)):
            assert y.shape == x.shape and y.dtype == np.uint8
            again = corrupt(x, corruption, s, image_seed(0, corruption, s, i))
            assert np.array_equal(again, y), f"{corruption} severity {s} is not deterministic"
        assert any(not np.array_equal(x, y) for x, y in zip(images, outputs[(corruption, s)], strict=True))


def test_random_corruptions_depend_on_the_seed(images: list[np.ndarray]) -> None:
    for c in ("gaussian_noise", "impulse_noise", "glass_blur", "snow", "frost", "fog", "elastic_transform"):
        assert not np.array_equal(corrupt(images[0], c, 3, 1), corrupt(images[0], c, 3, 2)), c


@pytest.mark.parametrize("corruption", ALL_CORRUPTIONS)
def test_distance_grows_with_severity(
    corruption: str, images: list[np.ndarray], outputs: dict[tuple[str, int], list[np.ndarray]]
) -> None:
    psnr = [
        np.mean([_psnr(x, y) for x, y in zip(images, outputs[(corruption, s)], strict=True)])
        for s in SEVERITIES
    ]
    allowed = NON_MONOTONE.get(corruption, set())
    for s in SEVERITIES[:-1]:
        if (s, s + 1) not in allowed:
            assert psnr[s] < psnr[s - 1], f"{corruption}: PSNR {psnr} does not fall from {s} to {s + 1}"
    if corruption not in ("elastic_transform", "saturate", "spatter"):
        assert psnr[-1] < psnr[0] - 1.0, f"{corruption}: severity 5 not clearly worse than 1: {psnr}"


def test_fast_zoom_equals_scipy_zoom() -> None:
    rng = np.random.default_rng(0)
    for shape in [(32, 32, 3), (64, 64, 3), (32, 32, 1), (40, 48, 3)]:
        x = (0.5 + rng.random(shape) / 2).astype(np.float32)
        for z in np.arange(1.0, 2.3, 0.03):
            a, b = clipped_zoom(x, z), clipped_zoom_reference(x, z)
            assert a.shape == b.shape == x.shape
            # where scipy's rounding falls off the edge it writes its cval 0; ours keeps the edge value
            assert ((np.abs(a - b) < 1e-5) | (b == 0)).all(), (shape, z)


def test_bad_inputs_are_refused(images: list[np.ndarray]) -> None:
    with pytest.raises(DataError, match="unknown corruption"):
        corrupt(images[0], "rain", 1)
    with pytest.raises(DataError, match="severity"):
        corrupt(images[0], "fog", 6)
    with pytest.raises(DataError, match="uint8"):
        corrupt(images[0].astype(np.float32), "fog", 1)
    with pytest.raises(DataError, match="at least 32"):
        corrupt(images[0][:16, :16], "fog", 1)


def test_imagenet_parameters_for_large_images() -> None:
    """imagecorruptions-imaug on numpy 2: every corruption keeps shape and dtype, seeded = same."""
    x = np.asarray(cut_patches(1, 72, seed=3)[0][0])
    for c in ALL_CORRUPTIONS:
        for s in (1, 5):
            y = corrupt(x, c, s, seed=11)
            assert y.shape == x.shape and y.dtype == np.uint8, c
            assert np.array_equal(y, corrupt(x, c, s, seed=11)), f"{c} not deterministic"
    state = np.random.get_state()[1].copy()
    corrupt(x, "gaussian_noise", 2, seed=5)
    assert np.array_equal(np.random.get_state()[1], state)  # the global stream is restored


def test_the_cli_list_of_15_corruptions_is_the_librarys() -> None:
    """components.data keeps its own copy (so --help needs no numpy); it must not drift."""
    from components.data import STANDARD_15
    from tessera.corruptions import CORRUPTIONS

    assert STANDARD_15 == CORRUPTIONS
