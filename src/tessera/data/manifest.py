"""``manifest.json``: what a data set holds (counts per split and class, sha256 per file, provenance).

The manifest is written with sorted keys and no timestamps, so it is as deterministic as the images
it describes and is versioned by DVC together with them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tessera.errors import DataError

MANIFEST = "manifest.json"
SCHEMA = 1


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def counts_of(files: Mapping[str, str]) -> dict[str, Any]:
    """Counts per split and class from relative paths ``<split>/<class>/<id>`` or ``unlabeled/<id>``."""
    counts: dict[str, Any] = {}
    for rel in sorted(files):
        parts = rel.split("/")
        if parts[0] == "unlabeled":
            counts["unlabeled"] = counts.get("unlabeled", 0) + 1
        elif len(parts) == 3:
            split = counts.setdefault(parts[0], {})
            split[parts[1]] = split.get(parts[1], 0) + 1
    return counts


def make_manifest(
    name: str,
    files: Mapping[str, str],
    provenance: list[dict[str, Any]],
    image_size: int,
    params: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest dict: ``files`` maps each relative path to its sha256."""
    counts = counts_of(files)
    classes = sorted({c for split, v in counts.items() if isinstance(v, dict) for c in v})
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "name": name,
        "image_size": image_size,
        "classes": classes,
        "counts": counts,
        "total": len(files),
        "provenance": provenance,
        "params": dict(params or {}),
        "files": dict(sorted(files.items())),
    }
    manifest.update(extra or {})
    return manifest


def write_manifest(root: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``root/manifest.json`` (sorted keys, trailing newline)."""
    path = Path(root) / MANIFEST
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return path


def read_manifest(root: str | Path) -> dict[str, Any]:
    """Read ``root/manifest.json``; :class:`DataError` when it is missing or malformed."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found: build or import the data set first (tessera data build)")
    try:
        out: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}): rebuild the data set") from e
    return out


def verify_manifest(root: str | Path) -> list[str]:
    """Relative paths whose bytes differ from the manifest's sha256, are missing, or are not listed."""
    root = Path(root)
    files = read_manifest(root)["files"]
    bad = [
        rel
        for rel, digest in files.items()
        if not (root / rel).is_file() or sha256_file(root / rel) != digest
    ]
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*.png")}
    bad += sorted(on_disk - set(files))
    return sorted(bad)


@contextlib.contextmanager
def staged_directory(out_dir: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out_dir``; when the block succeeds it replaces
    ``out_dir`` in one rename, when it fails it is removed and ``out_dir`` is left as it was."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield staging
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
