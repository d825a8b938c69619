"""The CIFAR-10-C corruptions (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations", ICLR 2019), for small images (up to 64 px).

The parameters are those of the authors' ``make_cifar_c.py`` (hendrycks/robustness), written for
32x32 images; sizes are scaled with the image where the reference hard-codes 32 (fog map, frost
crop and scale, elastic affine). Differences from the reference, all deliberate:
- no ImageMagick: motion blur (and the snow streaks) use :func:`ops.motion_blur_float`;
- every random draw comes from the ``rng`` argument (a per-image ``RandomState``), so a seed fixes
  the output;
- glass blur: the reference's ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy views copies the
  neighbour rather than swapping (CIFAR-10-C was made that way); with ``max_delta = 1`` every
  neighbour read is still unmodified, so the loop is vectorised with the same result.
Each function takes an (H, W, 3) uint8 array and returns float values in [0, 255].
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import lru_cache
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import skimage.color
from PIL import Image
from scipy.ndimage import map_coordinates

from tessera.corruptions import ops

Rng = np.random.RandomState

PARAMS: dict[str, list] = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [(1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)],
    "snow": [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    "elastic_transform": [
        (0, 0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    ],  # times the image size
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
    "speckle_noise": [0.06, 0.1, 0.12, 0.16, 0.2],
    "gaussian_blur": [0.4, 0.6, 0.7, 0.8, 1],
    "spatter": [
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ],
    "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
}


def _f(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) / 255.0


def gaussian_noise(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    c = PARAMS["gaussian_noise"][severity - 1]
    return np.clip(_f(x) + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    c = PARAMS["shot_noise"][severity - 1]
    return np.clip(rng.poisson(_f(x) * c) / c, 0, 1) * 255


def impulse_noise(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    amount = PARAMS["impulse_noise"][severity - 1]
    out = _f(x)
    flipped = rng.random_sample(x.shape) < amount  # salt-and-pepper, half each (skimage 's&p')
    salted = rng.random_sample(x.shape) < 0.5
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return out * 255


def speckle_noise(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    c = PARAMS["speckle_noise"][severity - 1]
    xf = _f(x)
    return np.clip(xf + xf * rng.normal(size=x.shape, scale=c), 0, 1) * 255


def gaussian_blur(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    return np.clip(ops.gaussian(_f(x), PARAMS["gaussian_blur"][severity - 1]), 0, 1) * 255


def glass_blur(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    sigma, delta, iterations = PARAMS["glass_blur"][severity - 1]
    img = (ops.gaussian(_f(x), sigma) * 255).astype(np.uint8)
    h, w = img.shape[:2]
    hs, ws = np.arange(h - delta, delta, -1), np.arange(w - delta, delta, -1)  # the reference's order
    for _ in range(iterations):
        d = rng.randint(-delta, delta, size=(len(hs), len(ws), 2))
        src = img.copy()
        img[hs[:, None], ws[None, :]] = src[hs[:, None] + d[..., 1], ws[None, :] + d[..., 0]]
    return np.clip(ops.gaussian(img / 255.0, sigma), 0, 1) * 255


def defocus_blur(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    radius, alias = PARAMS["defocus_blur"][severity - 1]
    kernel = ops.disk(radius, alias_blur=alias)
    return np.clip(ops.filter_channels(_f(x), kernel), 0, 1) * 255


def motion_blur(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    radius, sigma = PARAMS["motion_blur"][severity - 1]
    out = ops.motion_blur_float(x.astype(np.float64), radius, sigma, rng.uniform(-45, 45))
    return np.clip(np.rint(out), 0, 255)  # ImageMagick returns 8-bit pixels


def zoom_blur(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    start, stop, step = PARAMS["zoom_blur"][severity - 1]
    xf = _f(x).astype(np.float32)
    out = np.zeros_like(xf)
    factors = np.arange(start, stop, step)
    for z in factors:
        out += ops.clipped_zoom(xf, z)
    return np.clip((xf + out) / (len(factors) + 1), 0, 1) * 255


def snow(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    loc, scale, zoom, thresh, radius, sigma, keep = PARAMS["snow"][severity - 1]
    xf = x.astype(np.float32) / 255.0
    layer = rng.normal(size=x.shape[:2], loc=loc, scale=scale)
    layer = ops.clipped_zoom(layer[..., None], zoom)
    layer[layer < thresh] = 0
    layer8 = (np.clip(layer.squeeze(-1), 0, 1) * 255).astype(np.uint8)  # the reference's 'L' PNG
    streaks = ops.motion_blur_float(layer8.astype(np.float64), radius, sigma, rng.uniform(-135, -45))
    layer = (np.clip(np.rint(streaks), 0, 255) / 255.0)[..., None]
    xf = keep * xf + (1 - keep) * np.maximum(xf, ops.rgb2gray(xf) * 1.5 + 0.5)
    return np.clip(xf + layer + np.rot90(layer, k=2), 0, 1) * 255


@lru_cache(maxsize=16)
def _frost_image(idx: int, scale: float) -> np.ndarray:
    spec = importlib.util.find_spec("imagecorruptions")
    assert spec is not None and spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations))) / "frost"
    name = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg"][idx]
    frost = cv2.imread(str(folder / name))  # BGR
    if frost is None:
        raise FileNotFoundError(f"{folder / name}: reinstall imagecorruptions-imaug (make setup)")
    return np.asarray(cv2.resize(frost, (0, 0), fx=scale, fy=scale))


def frost(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    a, b = PARAMS["frost"][severity - 1]
    h, w = x.shape[:2]
    layer = _frost_image(int(rng.randint(5)), 0.2 * max(h, w) / 32)
    top, left = rng.randint(0, layer.shape[0] - h), rng.randint(0, layer.shape[1] - w)
    crop = layer[top : top + h, left : left + w][..., [2, 1, 0]]  # BGR -> RGB
    return np.clip(a * x.astype(np.float64) + b * crop, 0, 255)


def fog(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    amount, decay = PARAMS["fog"][severity - 1]
    h, w = x.shape[:2]
    xf = _f(x)
    max_val = xf.max()
    layer = ops.plasma_fractal(rng, ops.next_power_of_2(max(h, w)), decay)[:h, :w]
    xf = xf + amount * layer[..., None]
    return np.clip(xf * max_val / (max_val + amount), 0, 1) * 255


def brightness(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    hsv = skimage.color.rgb2hsv(_f(x))
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] + PARAMS["brightness"][severity - 1], 0, 1)
    return np.clip(skimage.color.hsv2rgb(hsv), 0, 1) * 255


def saturate(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    a, b = PARAMS["saturate"][severity - 1]
    hsv = skimage.color.rgb2hsv(_f(x))
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] * a + b, 0, 1)
    return np.clip(skimage.color.hsv2rgb(hsv), 0, 1) * 255


def contrast(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    c = PARAMS["contrast"][severity - 1]
    xf = _f(x)
    means = np.mean(xf, axis=(0, 1), keepdims=True)
    return np.clip((xf - means) * c + means, 0, 1) * 255


def elastic_transform(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    h, w = x.shape[:2]
    alpha, sigma, affine = (v * min(h, w) for v in PARAMS["elastic_transform"][severity - 1])
    image = x.astype(np.float32) / 255.0
    centre = np.array((h, w), dtype=np.float32) // 2
    square = min(h, w) // 3
    pts1 = np.array(
        [centre + square, [centre[0] + square, centre[1] - square], centre - square], dtype=np.float32
    )
    pts2 = pts1 + rng.uniform(-affine, affine, size=pts1.shape).astype(np.float32)
    image = np.asarray(
        cv2.warpAffine(image, cv2.getAffineTransform(pts1, pts2), (w, h), borderMode=cv2.BORDER_REFLECT_101)
    )
    dx = (ops.gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, "reflect", 3) * alpha).astype(np.float32)
    dy = (ops.gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, "reflect", 3) * alpha).astype(np.float32)
    yy, xx, zz = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    coords = (yy + dy[..., None]).reshape(-1), (xx + dx[..., None]).reshape(-1), zz.reshape(-1)
    warped = map_coordinates(image, coords, order=1, mode="reflect").reshape(image.shape)
    return np.clip(warped, 0, 1) * 255


def pixelate(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    c = PARAMS["pixelate"][severity - 1]
    h, w = x.shape[:2]
    im = Image.fromarray(x).resize((int(w * c), int(h * c)), Image.Resampling.BOX)
    return np.asarray(im.resize((w, h), Image.Resampling.BOX), dtype=np.float64)


def jpeg_compression(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    buf = BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=PARAMS["jpeg_compression"][severity - 1])
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)


def spatter(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    loc, scale, sigma, thresh, intensity, mud = PARAMS["spatter"][severity - 1]
    xf = x.astype(np.float32) / 255.0
    liquid = ops.gaussian(rng.normal(size=x.shape[:2], loc=loc, scale=scale), sigma)
    liquid[liquid < thresh] = 0
    if mud == 0:  # water drops, pale turquoise
        liquid8 = (liquid * 255).astype(np.uint8)
        dist = cv2.distanceTransform(255 - cv2.Canny(liquid8, 50, 150), cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
        dist = cv2.blur(cv2.filter2D(dist, cv2.CV_8U, ker), (3, 3)).astype(np.float32)
        m = liquid8.astype(np.float32) * dist
        m = m / max(float(m.max()), 1e-12) * intensity
        color = np.array([175, 238, 238], dtype=np.float32) / 255.0  # the reference adds it to RGB
        return np.clip(xf + m[..., None] * color, 0, 1) * 255
    m = ops.gaussian(np.where(liquid > thresh, 1.0, 0.0), intensity)  # mud, brown
    m[m < 0.8] = 0
    color = np.array([63, 42, 20], dtype=np.float32) / 255.0
    return np.clip(xf * (1 - m[..., None]) + m[..., None] * color, 0, 1) * 255


FUNCTIONS: dict[str, Callable[[np.ndarray, int, Rng], np.ndarray]] = {
    f.__name__: f
    for f in (
        gaussian_noise,
        shot_noise,
        impulse_noise,
        defocus_blur,
        glass_blur,
        motion_blur,
        zoom_blur,
        snow,
        frost,
        fog,
        brightness,
        contrast,
        elastic_transform,
        pixelate,
        jpeg_compression,
        speckle_noise,
        gaussian_blur,
        spatter,
        saturate,
    )
}
