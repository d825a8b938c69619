"""Request parsing and JSON errors shared by every Tessera handler.

A request is either the raw bytes of one image (``Content-Type: image/*`` or
``application/octet-stream``), a JSON object (``{"images": [<base64>, ...], "image": <base64>,
<option>: <value>, ...}``), or a multipart form (a file field ``data``/``image``/``images`` and option
fields). Anything else is refused with a 4xx and a JSON body ``{"error": ..., "code": ...}`` for
that request alone. The fields are validated by the endpoint's model (``serving.handlers.schema``).
Nothing here imports TorchServe.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tessera.errors import ImageError

IMAGE_FIELDS = ("data", "body", "image", "images", "file")
RAW_TYPES = ("image/", "application/octet-stream", "")
# A valid JSON body holds one object and at most two lists (images, box); these bound the work and
# memory of decoding a hostile body (deep nesting, millions of tiny items) before json.loads runs.
MAX_JSON_CONTAINERS = 64
MAX_JSON_ITEMS = 4096
MAX_FORM_FIELDS = 32


class RequestError(Exception):
    """A request answered with an error: ``code`` is the HTTP status (4xx: the client must fix it,
    ``message`` says what to do; 5xx: the server failed on it), for that request alone."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": self.message, "code": self.code}


@dataclass
class ParsedRequest:
    """One request of a TorchServe batch: its index, raw image bytes and its fields (a JSON object or
    a form's option fields; validated afterwards by the endpoint's model, ``serving.handlers.schema``)."""

    index: int
    blobs: list[bytes] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


def _content_type(headers: dict[str, Any], name: str) -> str:
    part = headers.get(name)
    if isinstance(part, dict):
        return str(part.get("content-type", "")).lower()
    return ""


def b64(value: Any, what: str) -> bytes:
    """Base64 text (or a data URL) -> bytes; 400 naming ``what`` if it is not."""
    if not isinstance(value, str):
        raise RequestError(400, f"{what} must be a base64 string, got {type(value).__name__}")
    if value.startswith("data:") and "," in value:  # a data URL: data:image/png;base64,....
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(400, f"{what} is not valid base64 ({e})") from e


def load_json(raw: bytes | bytearray | str, what: str = "JSON body") -> Any:
    """Decode JSON text after bounding its shape: at most ``MAX_JSON_CONTAINERS`` objects/lists (so
    no deep nesting) and ``MAX_JSON_ITEMS`` commas (so no millions of tiny values), else 400."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    containers = data.count(b"{") + data.count(b"[")
    if containers > MAX_JSON_CONTAINERS or data.count(b",") > MAX_JSON_ITEMS:
        raise RequestError(
            400,
            f"{what} is too deeply nested or has too many items (at most {MAX_JSON_CONTAINERS} objects "
            f'or lists and {MAX_JSON_ITEMS} items): send {{"images": [<base64>, ...], <option>: <value>}}',
        )
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RequestError(400, f"malformed {what}: {str(e)[:120]}") from e


def _json_type(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return {int: "a number", float: "a number", str: "a string", list: "a list"}.get(type(value), "a value")


def _from_json(obj: Any, index: int) -> ParsedRequest:
    if not isinstance(obj, dict):
        raise RequestError(
            400, f'the JSON body must be an object like {{"images": [<base64>, ...]}}, got {_json_type(obj)}'
        )
    return ParsedRequest(index, [], dict(obj))


def _option_value(raw: Any, name: str) -> Any:
    """A form's option field (bytes) -> a JSON scalar when it parses as one, else the text."""
    if not isinstance(raw, bytes | bytearray):
        return raw
    text = bytes(raw).decode("utf-8", errors="replace")
    try:
        return load_json(raw, f"form field {name[:40]!r}")
    except RequestError:
        return text


def _size(value: Any) -> int:
    return len(value) if isinstance(value, bytes | bytearray | str) else 0


def parse(row: dict[str, Any], headers: dict[str, Any], index: int, max_body_bytes: int) -> ParsedRequest:
    """One TorchServe request (``data[i]`` and its headers) -> :class:`ParsedRequest`.

    The body is size-checked before anything decodes it (the handlers turn TorchServe's own JSON
    decoding off, ``TS_DECODE_INPUT_REQUEST=false``, so they see the bytes); a value TorchServe did
    decode (a dict, list, number or null) is handled as the JSON it was, never turned into bytes.

    Raises:
        RequestError: wrong content type (415), body over ``max_body_bytes`` (413), malformed JSON or
            base64, a JSON body that is not an object, an empty body, too many form fields (400).
    """
    if not row:
        ctype = str(headers.get("Content-Type", headers.get("content-type", ""))).lower()
        raise RequestError(
            415,
            f"unsupported content type {ctype[:60]!r}: send image bytes (image/png, image/jpeg, "
            "application/octet-stream), JSON (application/json) or multipart/form-data",
        )
    if len(row) > MAX_FORM_FIELDS:
        raise RequestError(400, f"{len(row)} form fields; at most {MAX_FORM_FIELDS}")
    size = sum(_size(v) for v in row.values())
    if size > max_body_bytes:
        raise RequestError(
            413,
            f"request body of {size} bytes is over this deployment's limit of {max_body_bytes} bytes "
            "(max_body_bytes): send fewer or smaller images",
        )
    if len(row) == 1 and next(iter(row)) in ("body", "data"):
        name, value = next(iter(row.items()))
        ctype = _content_type(headers, name)
        is_json = ctype.startswith("application/json")
        if not isinstance(value, bytes | bytearray | str):  # TorchServe decoded the JSON already
            return _from_json(value, index)
        if is_json:
            return _from_json(load_json(value), index)
        if isinstance(value, str) or ctype.startswith("text/"):
            raise RequestError(415, f"unsupported content type {ctype[:60]!r}: text is not an image")
        if not any(ctype.startswith(t) if t else ctype == "" for t in RAW_TYPES):
            raise RequestError(
                415,
                f"unsupported content type {ctype[:60]!r}: use image/*, application/octet-stream or "
                "application/json",
            )
        if len(value) == 0:
            raise RequestError(400, "empty request body: send an image")
        return ParsedRequest(index, [bytes(value)])
    # multipart/form-data (or a form-urlencoded body): file fields carry images, the others options
    req = ParsedRequest(index)
    for name, value in row.items():
        name = str(name)
        ctype = _content_type(headers, name)
        if name in IMAGE_FIELDS or ctype.startswith("image/") or ctype == "application/octet-stream":
            if not value:
                raise RequestError(400, f"form field {name[:40]!r} is empty: attach an image")
            if isinstance(value, bytes | bytearray) and not ctype.startswith("text/"):
                req.blobs.append(bytes(value))
            elif isinstance(value, bytes | bytearray):  # a text field with base64
                req.blobs.append(b64(bytes(value).decode("utf-8", errors="replace"), name[:40]))
            else:
                req.blobs.append(b64(value, name[:40]))
        else:
            req.options[name] = _option_value(value, name)
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
