"""The one guarded image decoder and the deterministic PNG writer.

Every image that enters Tessera from outside (an imported folder, a request body at the serving
endpoint) goes through :func:`open_image`: it refuses what is not a regular file, empty files,
non-images, corrupt or truncated files and decompression bombs (the pixel count is checked from the
header, before any pixel is decoded), and converts every mode (grayscale, palette, RGBA, 16-bit) to
8-bit RGB. :func:`save_png` writes PNG bytes that depend on the pixels alone (fixed compression, no
metadata, no timestamps), so a rebuilt data set hashes to the same DVC md5.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tessera.errors import ImageError

# 40 megapixels: a 6,000 x 6,000 photo passes, a crafted 100,000 x 100,000 header does not.
DEFAULT_MAX_PIXELS = 40_000_000
PNG_COMPRESS_LEVEL = 6  # fixed: the PNG bytes must not depend on a library default

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _read_bytes(path: Path) -> bytes:
    """The bytes of a regular file, or :class:`ImageError` naming why it cannot be read."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ImageError(f"unreadable: {e.strerror or e}") from e
    if stat.S_ISDIR(st.st_mode):
        raise ImageError("unreadable: a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        # FIFOs, sockets and devices would block or stream forever: never open them.
        raise ImageError("unreadable: not a regular file (FIFO, socket or device)")
    if st.st_size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        return path.read_bytes()
    except OSError as e:
        raise ImageError(f"unreadable: {e.strerror or e}") from e


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; 16-bit values are scaled, alpha is composited on white."""
    if im.mode in _SIXTEEN_BIT or im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            top = 1.0 if a.max(initial=0.0) <= 1.0 else 255.0
        else:
            top = 65535.0 if a.max(initial=0.0) > 255 or im.mode != "I" else 255.0
        a8 = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(a8, mode="L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")
    return im


def open_image(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode one image safely into a loaded PIL ``RGB`` image.

    Args:
        source: a path or the encoded bytes (e.g. a request body).
        max_pixels: refuse images whose header declares more pixels (decompression-bomb guard).

    Raises:
        ImageError: with the reason (unreadable, empty, not an image, corrupt or truncated,
            too large) as its message.
    """
    data = source if isinstance(source, bytes | bytearray) else _read_bytes(Path(source))
    if len(data) == 0:
        raise ImageError("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as e:
            raise ImageError("not an image (unrecognised format)") from e
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"too large to decode safely (decompression-bomb guard): {e}") from e
        except Exception as e:  # a malformed header may raise anything from a plugin
            raise ImageError(f"corrupt or truncated image (header): {e}") from e
        width, height = im.size
        if width * height > max_pixels:
            raise ImageError(
                f"too large to decode safely: {width}x{height} = {width * height} pixels "
                f"> limit {max_pixels} (decompression-bomb guard; raise max_pixels if you trust it)"
            )
        if width == 0 or height == 0:
            raise ImageError(f"empty image ({width}x{height})")
        try:
            im.load()
            source_mode = im.mode
            upright: Image.Image = ImageOps.exif_transpose(im) or im
            rgb = _to_rgb(upright)
            rgb.info = {"source_mode": source_mode}  # what was converted, for import reports
            return rgb
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"too large to decode safely (decompression-bomb guard): {e}") from e
        except Exception as e:
            raise ImageError(f"corrupt or truncated image: {e}") from e


def square_resize(im: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, then resize to ``size`` x ``size`` (bicubic, antialiased)."""
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    if (w, h) != (side, side):
        im = im.crop((left, top, left + side, top + side))
    if side != size:
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    return im


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """Deterministic PNG bytes of an (H, W, 3) uint8 array or a PIL image: no metadata, fixed options."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    im.info = {}
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def save_png(image: np.ndarray | Image.Image, path: str | Path) -> bytes:
    """Write :func:`png_bytes` to ``path`` (parents created); returns the bytes written."""
    data = png_bytes(image)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data
