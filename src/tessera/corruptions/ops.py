"""Building blocks of the corruptions (Hendrycks & Dietterich, ICLR 2019), in numpy/scipy/OpenCV.

The reference code calls ImageMagick (Wand) for motion blur; :func:`motion_blur_float` re-implements
ImageMagick's ``MotionBlurImage`` (a one-sided Gaussian-weighted line kernel of width
``2 * ceil(radius) + 1`` along ``angle``, edge pixels repeated) so no ImageMagick is needed.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy.ndimage import zoom as scizoom


def gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """``skimage.filters.gaussian`` on a float image: blur H and W, never the channel axis."""
    from scipy.ndimage import gaussian_filter

    sig = (sigma, sigma, 0.0) if x.ndim == 3 else (sigma, sigma)
    return gaussian_filter(x, sigma=sig, mode=mode, truncate=truncate)


def disk(radius: float, alias_blur: float = 0.1) -> np.ndarray:
    """The anti-aliased disk kernel of defocus blur."""
    if radius <= 8:
        span = np.arange(-8, 8 + 1).astype(np.float64)
        ksize = (3, 3)
    else:
        span = np.arange(-radius, radius + 1).astype(np.float64)
        ksize = (5, 5)
    xx, yy = np.meshgrid(span, span)
    aliased = np.array((xx**2 + yy**2) <= radius**2, dtype=np.float32)
    aliased /= np.sum(aliased)
    return cv2.GaussianBlur(aliased, ksize=ksize, sigmaX=alias_blur)  # supersample to antialias


def filter_channels(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate each channel of (H, W, C) float ``x`` with ``kernel`` (OpenCV border reflect-101)."""
    return np.stack([cv2.filter2D(x[:, :, d], -1, kernel) for d in range(x.shape[2])], axis=2)


def plasma_fractal(rng: np.random.RandomState, mapsize: int = 32, wibbledecay: float = 3) -> np.ndarray:
    """A (mapsize, mapsize) diamond-square height map in [0, 1] (the fog layer); mapsize a power of 2."""
    assert mapsize & (mapsize - 1) == 0
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100.0

    def wibbledmean(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        square = corners + np.roll(corners, shift=-1, axis=0)
        square += np.roll(square, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(square)
        dr = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        ul = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        lt = dr + np.roll(dr, 1, axis=0) + ul + np.roll(ul, -1, axis=1)
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(lt)
        tt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=0)
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(tt)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n."""
    return 1 if n <= 1 else 2 ** (n - 1).bit_length()


def _zoom_axis(n: int, zoom_factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sample positions along one axis of :func:`clipped_zoom` (scipy.ndimage.zoom, order 1)."""
    crop = int(np.ceil(n / zoom_factor))
    start = (n - crop) // 2
    n_out = int(round(crop * zoom_factor))
    trim = (n_out - n) // 2
    step = (crop - 1) / (n_out - 1) if n_out > 1 else 0.0
    pos = np.arange(trim, trim + n) * step  # scipy's mapping: output i -> input i * (in-1)/(out-1)
    lo = np.minimum(np.floor(pos).astype(np.int64), crop - 1)
    hi = np.minimum(lo + 1, crop - 1)
    return start + lo, start + hi, pos - lo


def clipped_zoom(img: np.ndarray, zoom_factor: float) -> np.ndarray:
    """Zoom into the centre of (H, W, C) ``img`` by ``zoom_factor`` (bilinear) and crop back to (H, W).

    Equal to the reference's ``scipy.ndimage.zoom(order=1)`` of the centre crop, then trimmed; only
    the kept pixels are computed (the blur calls it up to 26 times per image). One difference: for
    some factors scipy's rounding puts the last sample just past the edge and fills it with 0 (its
    ``cval``); here that pixel is the edge value.
    """
    h, w = img.shape[:2]
    r0, r1, fr = _zoom_axis(h, zoom_factor)
    c0, c1, fc = _zoom_axis(w, zoom_factor)
    fr = fr.reshape(-1, 1, *([1] * (img.ndim - 2)))
    fc = fc.reshape(1, -1, *([1] * (img.ndim - 2)))
    rows = img[r0] * (1 - fr) + img[r1] * fr  # (h, W, C)
    return (rows[:, c0] * (1 - fc) + rows[:, c1] * fc).astype(img.dtype)


def clipped_zoom_reference(img: np.ndarray, zoom_factor: float) -> np.ndarray:
    """The reference implementation with scipy (kept to test :func:`clipped_zoom` against)."""
    h, w = img.shape[:2]
    ch, cw = int(np.ceil(h / zoom_factor)), int(np.ceil(w / zoom_factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    out = scizoom(img[top : top + ch, left : left + cw], (zoom_factor, zoom_factor, 1), order=1)
    trim_top, trim_left = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
    return out[trim_top : trim_top + h, trim_left : trim_left + w]


def motion_blur_float(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick ``-motion-blur radiusxsigma+angle`` of an (H, W) or (H, W, C) float image."""
    width = int(2 * math.ceil(radius) + 1) if radius > 0 else 3
    kernel = np.exp(-(np.arange(width) ** 2) / (2.0 * sigma * sigma))
    kernel /= kernel.sum()
    px, py = width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle))
    hyp = math.hypot(px, py)
    pad = width + 1
    pad_spec = ((pad, pad), (pad, pad)) + (((0, 0),) if x.ndim == 3 else ())
    padded = np.pad(x.astype(np.float64), pad_spec, mode="edge")  # ImageMagick's edge virtual pixels
    h, w = x.shape[:2]
    out = np.zeros(x.shape, dtype=np.float64)
    for i in range(width):
        ox = int(math.ceil(i * py / hyp - 0.5))
        oy = int(math.ceil(i * px / hyp - 0.5))
        out += kernel[i] * padded[pad + oy : pad + oy + h, pad + ox : pad + ox + w]
    return out


def rgb2gray(x: np.ndarray) -> np.ndarray:
    """OpenCV's RGB -> grey weights on an (H, W, 3) float image -> (H, W, 1)."""
    return (x @ np.array([0.299, 0.587, 0.114]))[..., None]
