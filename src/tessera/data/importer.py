"""Bring your own data: turn a user's image folder into Tessera's layout, checking every file.

Accepted source layouts (detected in this order):
- ``SRC/{train,val,test}/<class>/...``: the splits are kept as they are;
- ``SRC/<class>/...``: a seeded stratified split (80/10/10 by default);
- ``SRC/*`` (no sub-folders): an unlabelled pool (``unlabeled/``).
A folder ``SRC/unlabeled/`` beside class or split folders becomes the unlabelled pool.
Every file goes through :func:`tessera.data.images.open_image`; what fails is listed in the rejection
report with its reason and the import goes on. The source is only read. A fingerprint of the source
listing (paths, sizes, modification times) and the options makes a repeated import a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessera.data.folder import IMAGE_SUFFIXES
from tessera.data.images import DEFAULT_MAX_PIXELS, open_image, save_png, square_resize
from tessera.data.manifest import make_manifest, read_manifest, sha256_bytes, staged_directory, write_manifest
from tessera.data.split import SPLIT_NAMES, parse_fractions, stratified_split
from tessera.errors import DataError, ImageError

REPORT = "import_report.json"
IMPORTER_VERSION = 1  # part of the fingerprint: bump when the output of an import changes


@dataclass
class Entry:
    """One source file (or thing named like one) and where it should go."""

    rel: str  # path relative to the source, '/'-separated
    split: str | None  # train/val/test, None = to be split, "unlabeled" = the pool
    cls: str | None
    reason: str | None = None  # set when the entry is rejected before decoding


@dataclass
class ImportResult:
    status: str  # "imported" or "unchanged"
    out_dir: Path
    counts: dict[str, Any]
    imported: int
    rejected: list[dict[str, str]] = field(default_factory=list)
    converted: dict[str, int] = field(default_factory=dict)


def _is_image_named_dir(p: Path) -> bool:
    return p.is_dir() and p.suffix.lower() in IMAGE_SUFFIXES


def _walk(folder: Path, base: Path, split: str | None, cls: str | None) -> list[Entry]:
    """Every file under ``folder`` (recursively); directories named like images are entries too."""
    out = []
    for p in sorted(folder.iterdir()):
        rel = p.relative_to(base).as_posix()
        if p.is_dir() and not p.is_symlink() and not _is_image_named_dir(p):
            out += _walk(p, base, split, cls)
        else:
            out.append(Entry(rel, split, cls))
    return out


def scan(src: Path) -> tuple[str, list[Entry]]:
    """The layout (``presplit``, ``classes`` or ``flat``) and every entry of ``src``."""
    top = sorted(src.iterdir())
    dirs = [p for p in top if p.is_dir() and not _is_image_named_dir(p)]
    loose = [p for p in top if p not in dirs]
    names = {p.name for p in dirs}
    entries: list[Entry] = []
    if names & set(SPLIT_NAMES):
        layout = "presplit"
        for d in dirs:
            if d.name in SPLIT_NAMES:
                for c in sorted(d.iterdir()):
                    if c.is_dir() and not _is_image_named_dir(c):
                        entries += _walk(c, src, d.name, c.name)
                    else:
                        entries.append(
                            Entry(
                                c.relative_to(src).as_posix(),
                                d.name,
                                None,
                                f"outside a class folder (put it in {d.name}/<class>/)",
                            )
                        )
            elif d.name == "unlabeled":
                entries += _walk(d, src, "unlabeled", None)
            else:
                entries += [
                    Entry(e.rel, None, None, "outside train/val/test") for e in _walk(d, src, None, None)
                ]
    elif dirs:
        layout = "classes"
        for d in dirs:
            entries += _walk(
                d,
                src,
                "unlabeled" if d.name == "unlabeled" else None,
                None if d.name == "unlabeled" else d.name,
            )
    else:
        layout = "flat"
    for p in loose:
        if layout == "flat":
            entries.append(Entry(p.name, "unlabeled", None))
        else:
            entries.append(Entry(p.name, None, None, "outside a class folder"))
    return layout, entries


def fingerprint(src: Path, entries: list[Entry], options: dict[str, Any]) -> str:
    """sha256 of the source listing (path, type, size, mtime) and the import options."""
    listing = []
    for e in entries:
        st = os.lstat(src / e.rel)
        listing.append([e.rel, st.st_mode, st.st_size, st.st_mtime_ns])
    blob = json.dumps({"listing": listing, "options": options, "v": IMPORTER_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _safe(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"


def _unchanged(out_dir: Path, fp: str) -> bool:
    if not (out_dir / "manifest.json").is_file():
        return False
    try:
        manifest = read_manifest(out_dir)
    except DataError:
        return False
    if manifest.get("import", {}).get("fingerprint") != fp:
        return False
    return all((out_dir / rel).is_file() for rel in manifest.get("files", {}))


def import_folder(
    src: str | Path,
    out_dir: str | Path,
    *,
    size: int = 32,
    split: str | tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], Any] | None = None,
) -> ImportResult:
    """Import ``src`` into ``out_dir`` (``data/<name>``); see the module docstring."""
    src, out_dir = Path(src), Path(out_dir)
    if not src.is_dir():
        raise DataError(f"source {src} is not a folder: pass a folder of images (class sub-folders or flat)")
    if out_dir.resolve() == src.resolve() or src.resolve() in out_dir.resolve().parents:
        raise DataError(f"the output {out_dir} lies inside the source {src}: choose another --root")
    fractions = parse_fractions(split)
    layout, entries = scan(src)
    options = {"size": size, "split": list(fractions), "seed": seed, "max_pixels": max_pixels}
    fp = fingerprint(src, entries, options)
    if _unchanged(out_dir, fp):
        manifest = read_manifest(out_dir)
        report = json.loads((out_dir / REPORT).read_text())
        return ImportResult(
            "unchanged",
            out_dir,
            manifest["counts"],
            manifest["total"],
            report["rejected"],
            report["converted"],
        )
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").exists():
        raise DataError(f"{out_dir} exists and is not a Tessera data set: choose another --name")

    rejected: list[dict[str, str]] = []
    converted: Counter[str] = Counter()
    good: list[tuple[Entry, Any]] = []
    for e in entries:
        if e.reason is None:
            try:
                im = open_image(src / e.rel, max_pixels=max_pixels)
                good.append((e, square_resize(im, size)))
                mode = im.info.get("source_mode", "RGB")
                if mode != "RGB":
                    converted[mode] += 1
            except ImageError as err:
                e.reason = str(err)
        if e.reason is not None:
            rejected.append({"file": e.rel, "reason": e.reason})
        if progress:
            progress(1)

    classes = sorted({e.cls for e in entries if e.cls is not None})
    empty = [c for c in classes if not any(g.cls == c for g, _ in good)]
    report = {
        "source": str(src.resolve()),
        "layout": layout,
        "imported": len(good),
        "rejected": rejected,
        "converted": dict(sorted(converted.items())),
        "options": options,
    }
    if empty or not good:
        failed = out_dir.parent / f"{out_dir.name}.import-report.json"
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        what = f"class(es) {empty} have no valid image" if empty else "no valid image found"
        raise DataError(
            f"import of {src} failed: {what}; reasons per file in {failed}. "
            "Fix or remove those files (or the empty class folders) and import again."
        )

    to_split = [i for i, (e, _) in enumerate(good) if e.split is None]
    assigned = stratified_split([good[i][0].cls or "" for i in to_split], fractions, seed)
    splits = {i: s for i, s in zip(to_split, assigned, strict=True)}
    with staged_directory(out_dir) as staging:
        files: dict[str, str] = {}
        origin: dict[str, str] = {}
        for i, (e, im) in enumerate(good):
            where = splits.get(i, e.split)
            folder = "unlabeled" if where == "unlabeled" else f"{where}/{e.cls}"
            stem, n = _safe(Path(e.rel).stem), 1
            rel = f"{folder}/{stem}.png"
            while rel in files:
                n += 1
                rel = f"{folder}/{stem}-{n}.png"
            files[rel] = sha256_bytes(save_png(im, staging / rel))
            origin[rel] = e.rel
        provenance = [{"source": str(src.resolve()), "layout": layout, "files": len(entries)}]
        manifest = make_manifest(
            out_dir.name,
            files,
            provenance,
            size,
            options,
            extra={"import": {"fingerprint": fp, "origin": origin, "rejected": len(rejected)}},
        )
        write_manifest(staging, manifest)
        (staging / REPORT).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return ImportResult(
        "imported", out_dir, manifest["counts"], len(files), rejected, dict(sorted(converted.items()))
    )
