"""The one guarded image decoder and the deterministic PNG writer.

Every image that enters Tessera from outside (an imported folder, a request body at the serving
endpoint) goes through :func:`open_image`: it refuses what is not a regular file, empty files, files
over a byte cap (never read), files whose first bytes name no accepted format, other non-images,
corrupt or truncated files and decompression bombs (the pixel count is checked from the header,
before any pixel is decoded), and converts every mode (grayscale, palette, RGBA, 16-bit) to 8-bit
RGB. :func:`save_png` writes PNG bytes that depend on the pixels alone (fixed compression, no
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
# 64 MiB: far above any photo Tessera imports; a file larger than this is refused unread.
DEFAULT_MAX_FILE_BYTES = 64 * 1024**2
_HEADER_BYTES = 16  # sniffed before the rest of a file is read
PNG_COMPRESS_LEVEL = 6  # fixed: the PNG bytes must not depend on a library default

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def sniff_format(head: bytes) -> str | None:
    """The format named by the first bytes of a file (PNG, JPEG, GIF, BMP, TIFF, WEBP), else None.

    Only these formats (those of :data:`tessera.data.folder.IMAGE_SUFFIXES`) are handed to PIL from
    a file, so an arbitrary file never reaches the decoder. 16 bytes are enough (PIL looks at 16 too).
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):  # TIFF, BigTIFF
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def read_image_file(
    path: str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    dir_fd: int | None = None,
    follow_symlinks: bool = True,
) -> bytes:
    """The bytes of one image file, checked before it is read whole; :class:`ImageError` says why not.

    Refused without being opened: anything but a regular file (directories, FIFOs, sockets,
    devices; with ``follow_symlinks=False`` a symlink too), an empty file and a file larger than
    ``max_bytes``. Then the file is opened (no-follow when asked, non-blocking), checked to be the
    same file, its first bytes are sniffed (:func:`sniff_format`) and only then is the rest read, never
    more than ``max_bytes``. ``dir_fd``: ``path`` is relative to that open directory.
    """
    try:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
    except OSError as e:
        raise ImageError(f"unreadable: {e.strerror or e}") from e
    if stat.S_ISLNK(st.st_mode):
        raise ImageError("a symlink: not followed")
    if stat.S_ISDIR(st.st_mode):
        raise ImageError("unreadable: a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        # FIFOs, sockets and devices would block or stream forever: never open them.
        raise ImageError("unreadable: not a regular file (FIFO, socket or device)")
    if st.st_size == 0:
        raise ImageError("empty file (0 bytes)")
    if st.st_size > max_bytes:
        raise _too_big(st.st_size, max_bytes)
    flags = (
        os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    )
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as e:
        raise ImageError(f"unreadable: {e.strerror or e}") from e
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode):
            raise ImageError("unreadable: the file was replaced while it was being read")
        chunks = [_read_upto(fd, _HEADER_BYTES)]
        if sniff_format(chunks[0]) is None:
            raise ImageError("not an image (unrecognised format)")
        total = len(chunks[0])
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:  # it grew after the size check
            raise _too_big(total, max_bytes)
        return b"".join(chunks)
    except OSError as e:
        raise ImageError(f"unreadable: {e.strerror or e}") from e
    finally:
        os.close(fd)


def _read_upto(fd: int, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _too_big(size: int, max_bytes: int) -> ImageError:
    return ImageError(
        f"file too large: {size} bytes > limit {max_bytes} bytes "
        "(not read; raise max_file_bytes if you trust the file)"
    )


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


def open_image(
    source: str | Path | bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Image.Image:
    """Decode one image safely into a loaded PIL ``RGB`` image.

    Args:
        source: a path (read by :func:`read_image_file`) or the encoded bytes (e.g. a request body).
        max_pixels: refuse images whose header declares more pixels (decompression-bomb guard).
        max_bytes: a path source: refuse a larger file without reading it.

    Raises:
        ImageError: with the reason (unreadable, empty, not an image, corrupt or truncated,
            too large) as its message.
    """
    data = source if isinstance(source, bytes | bytearray) else read_image_file(source, max_bytes=max_bytes)
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
