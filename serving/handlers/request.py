"""Request parsing and JSON errors shared by every Tessera handler.

A request is either the raw bytes of one image (``Content-Type: image/*`` or
``application/octet-stream``), a JSON object (``{"images": [<base64>, ...], "image": <base64>,
<option>: <value>, ...}``), or a multipart form (a file field ``data``/``image``/``images`` and option
fields). Anything else is refused with a 4xx and a JSON body ``{"error": ..., "code": ...}``; the
worker never sees an exception for a bad request, so one bad request cannot fail its batch-mates.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tessera.errors import ImageError

IMAGE_FIELDS = ("data", "body", "image", "images", "file")
RAW_TYPES = ("image/", "application/octet-stream", "")


class RequestError(Exception):
    """A request the client must fix: ``code`` is the HTTP status (4xx), ``message`` says what to do."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": self.message, "code": self.code}


@dataclass
class ParsedRequest:
    """One request of a TorchServe batch: its index, raw image bytes and options (not yet validated)."""

    index: int
    blobs: list[bytes] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


def _content_type(headers: dict[str, Any], name: str) -> str:
    part = headers.get(name)
    if isinstance(part, dict):
        return str(part.get("content-type", "")).lower()
    return ""


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise RequestError(400, f"{what} must be a base64 string, got {type(value).__name__}")
    if value.startswith("data:") and "," in value:  # a data URL: data:image/png;base64,....
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(400, f"{what} is not valid base64 ({e})") from e


def _from_json(obj: Any, index: int) -> ParsedRequest:
    if not isinstance(obj, dict):
        raise RequestError(400, 'the JSON body must be an object like {"images": [<base64>, ...]}')
    req = ParsedRequest(index)
    for key, value in obj.items():
        if key == "images":
            if not isinstance(value, list):
                raise RequestError(400, '"images" must be a list of base64 strings')
            req.blobs += [_b64(v, f"images[{i}]") for i, v in enumerate(value)]
        elif key == "image":
            req.blobs.append(_b64(value, "image"))
        else:
            req.options[key] = value
    return req


def _option_value(raw: Any) -> Any:
    """A multipart option field (bytes) -> a JSON scalar when it parses as one, else the text."""
    text = bytes(raw).decode("utf-8", errors="replace") if isinstance(raw, bytes | bytearray) else raw
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def parse(row: dict[str, Any], headers: dict[str, Any], index: int) -> ParsedRequest:
    """One TorchServe request (``data[i]`` and its headers) -> :class:`ParsedRequest`.

    Raises:
        RequestError: wrong content type (415), malformed JSON or base64 (400), empty body (400).
    """
    if not row:
        ctype = str(headers.get("Content-Type", headers.get("content-type", ""))).lower()
        raise RequestError(
            415,
            f"unsupported content type {ctype!r}: send image bytes (image/png, image/jpeg, "
            "application/octet-stream), JSON (application/json) or multipart/form-data",
        )
    if len(row) == 1 and next(iter(row)) in ("body", "data"):
        name, value = next(iter(row.items()))
        ctype = _content_type(headers, name)
        if isinstance(value, dict | list):
            return _from_json(value, index)
        if isinstance(value, str):
            raise RequestError(415, f"unsupported content type {ctype!r}: text is not an image")
        if ctype.startswith("application/json"):
            try:
                return _from_json(json.loads(bytes(value).decode("utf-8")), index)
            except (UnicodeDecodeError, ValueError) as e:
                raise RequestError(400, f"malformed JSON body: {e}") from e
        if not any(ctype.startswith(t) if t else ctype == "" for t in RAW_TYPES):
            raise RequestError(
                415,
                f"unsupported content type {ctype!r}: use image/*, application/octet-stream or "
                "application/json",
            )
        if len(value) == 0:
            raise RequestError(400, "empty request body: send an image")
        return ParsedRequest(index, [bytes(value)])
    # multipart/form-data: file fields carry images, the others options
    req = ParsedRequest(index)
    for name, value in row.items():
        ctype = _content_type(headers, name)
        if name in IMAGE_FIELDS or ctype.startswith("image/") or ctype == "application/octet-stream":
            if not value:
                raise RequestError(400, f"form field {name!r} is empty: attach an image")
            req.blobs.append(bytes(value) if isinstance(value, bytes | bytearray) else _b64(value, name))
        else:
            req.options[name] = _option_value(value)
    return req


def decode_image(
    blob: bytes, size: int, max_pixels: int, what: str = "image"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Image bytes -> ((3, size, size) float32 in [0, 1], its original (width, height)).

    Decoding goes through the project's one image guard, ``tessera.data.images.open_image`` (not an
    image, truncated, zero-size, decompression bombs -> :class:`RequestError` 400, too large -> 413);
    the image is then centre-cropped to a square and resized as the data import does (``square_resize``).
    """
    from tessera.data.images import open_image, square_resize

    try:
        img = open_image(bytes(blob), max_pixels=max_pixels)
    except ImageError as e:
        code = 413 if "too large" in str(e) else 400
        raise RequestError(code, f"{what}: {e}") from e
    original = img.size
    arr = np.asarray(square_resize(img, size), dtype=np.uint8)  # (S, S, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0), original  # (3, S, S)


def check_options(options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """Refuse options this endpoint does not know (400), naming them and the known ones."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise RequestError(400, f"unknown option(s) {unknown}; this endpoint accepts {sorted(allowed)}")


def int_option(options: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    """An integer option within ``[low, high]`` (the deployment's cap), else 400."""
    value = options.get(key, default)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"option {key!r} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise RequestError(400, f"option {key!r} = {value} is outside [{low}, {high}] (the deployment's cap)")
    return value


def float_option(options: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    """A number option within ``[low, high]``, else 400."""
    value = options.get(key, default)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise RequestError(400, f"option {key!r} must be a number, got {value!r}")
    if not low <= float(value) <= high:
        raise RequestError(400, f"option {key!r} = {value} is outside [{low}, {high}]")
    return float(value)
