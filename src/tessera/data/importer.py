"""Bring your own data: turn a user's image folder into Tessera's layout, checking every file.

Accepted source layouts (detected in this order):
- ``SRC/{train,val,test}/<class>/...``: the splits are kept as they are;
- ``SRC/<class>/...``: a seeded stratified split (70/10/20 by default, as ``data.split``);
- ``SRC/*`` (no sub-folders): an unlabelled pool (``unlabeled/``).
A folder ``SRC/unlabeled/`` beside class or split folders becomes the unlabelled pool.
Every file is read by :func:`tessera.data.images.read_image_file` (refused unread when it is not a
regular file, empty or over ``max_file_bytes``; its first bytes sniffed before the rest is read) and
decoded by :func:`tessera.data.images.open_image`; what fails is listed in the rejection report with
its reason and the import goes on. Symlinks are never followed: one that leads out of the source is
reported as such (its target is never opened), and so is one inside it (an image is imported once,
from its real path, so a link cannot copy a test image into train). Files are opened beneath one
open descriptor of the source, every folder on the way no-follow, so nothing outside it is ever
opened even if the tree changes during the import. The source is only read. A fingerprint of the
source listing (paths, sizes, modification times) and the options makes a repeated import a no-op.
"""

from __future__ import annotations

import errno
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
from tessera.data.images import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_PIXELS,
    open_image,
    read_image_file,
    save_png,
    square_resize,
)
from tessera.data.manifest import make_manifest, read_manifest, sha256_bytes, staged_directory, write_manifest
from tessera.data.split import DEFAULT_SPLIT, SPLIT_NAMES, parse_fractions, stratified_split
from tessera.data.validate import DEFAULT_MIN_IMAGES, Item, check, default_purpose
from tessera.errors import ConfigError, DataError, ImageError

REPORT = "import_report.json"
IMPORTER_VERSION = 2  # part of the fingerprint: bump when the output of an import changes
# A data set name is one path component: no '/', no '.' or '..', at most 64 characters.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LINK_OUTSIDE = "symlink to a path outside the source folder (not followed)"
LINK_INSIDE = "symlink inside the source folder (not followed: import the file it points to)"
_DIR_FLAGS = (
    os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
)


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
    warnings: list[str] = field(default_factory=list)  # tessera.data.validate's
    steps: dict[str, str] = field(default_factory=dict)  # what each later step can do with the set


def dataset_dir(root: str | Path, name: str) -> Path:
    """``root/name`` once ``name`` is a safe data set name whose folder resolves directly inside ``root``.

    Raises:
        ConfigError: ``name`` does not match :data:`NAME_PATTERN` (e.g. ``../x``, ``/abs``, ``..``),
            or ``root/name`` resolves elsewhere (an existing symlink); nothing is written.
    """
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"invalid data set name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit (no '/', no '..'); the set is written to <root>/<name>/"
        )
    target = Path(root) / name
    resolved, inside = target.resolve(), Path(root).resolve() / name
    if resolved != inside:
        raise ConfigError(
            f"data set folder {target} resolves to {resolved}, outside --root {root}: "
            "remove that link or choose another --name"
        )
    return target


def _is_folder(p: Path) -> bool:
    """A real directory (not a symlink) that is not named like an image: walked, not an entry."""
    return not p.is_symlink() and p.is_dir() and p.suffix.lower() not in IMAGE_SUFFIXES


def _link_reason(p: Path, real_src: Path) -> str:
    """Why the symlink ``p`` is rejected; its target is resolved by name only (never opened)."""
    target = Path(os.path.realpath(p))
    return LINK_INSIDE if target == real_src or real_src in target.parents else LINK_OUTSIDE


def _entry(
    p: Path, src: Path, real_src: Path, split: str | None, cls: str | None, reason: str | None = None
) -> Entry:
    if p.is_symlink():
        reason = _link_reason(p, real_src)
    return Entry(p.relative_to(src).as_posix(), split, cls, reason)


def _walk(folder: Path, src: Path, real_src: Path, split: str | None, cls: str | None) -> list[Entry]:
    """Every entry under ``folder`` (recursively, never through a symlink); directories named like
    images and symlinks are entries too."""
    out = []
    for p in sorted(folder.iterdir()):
        if _is_folder(p):
            out += _walk(p, src, real_src, split, cls)
        else:
            out.append(_entry(p, src, real_src, split, cls))
    return out


def scan(src: Path) -> tuple[str, list[Entry]]:
    """The layout (``presplit``, ``classes`` or ``flat``) and every entry of ``src``."""
    real = src.resolve()
    top = sorted(src.iterdir())
    dirs = [p for p in top if _is_folder(p)]
    loose = [p for p in top if p not in dirs]
    names = {p.name for p in dirs}
    entries: list[Entry] = []
    if names & set(SPLIT_NAMES):
        layout = "presplit"
        for d in dirs:
            if d.name in SPLIT_NAMES:
                for c in sorted(d.iterdir()):
                    if _is_folder(c):
                        entries += _walk(c, src, real, d.name, c.name)
                    else:
                        where = f"outside a class folder (put it in {d.name}/<class>/)"
                        entries.append(_entry(c, src, real, d.name, None, where))
            elif d.name == "unlabeled":
                entries += _walk(d, src, real, "unlabeled", None)
            else:
                entries += [
                    Entry(e.rel, None, None, e.reason or "outside train/val/test")
                    for e in _walk(d, src, real, None, None)
                ]
    elif dirs:
        layout = "classes"
        for d in dirs:
            entries += _walk(
                d,
                src,
                real,
                "unlabeled" if d.name == "unlabeled" else None,
                None if d.name == "unlabeled" else d.name,
            )
    else:
        layout = "flat"
    for p in loose:
        if layout == "flat":
            entries.append(_entry(p, src, real, "unlabeled", None))
        else:
            entries.append(_entry(p, src, real, None, None, "outside a class folder"))
    return layout, entries


def fingerprint(src: Path, entries: list[Entry], options: dict[str, Any]) -> str:
    """sha256 of the source listing (path, type, size, mtime) and the import options."""
    listing = []
    for e in entries:
        st = os.lstat(src / e.rel)
        listing.append([e.rel, st.st_mode, st.st_size, st.st_mtime_ns])
    blob = json.dumps({"listing": listing, "options": options, "v": IMPORTER_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_beneath(src: Path, src_fd: int | None, rel: str, max_bytes: int) -> bytes:
    """The bytes of ``src/rel``, opened beneath ``src_fd`` with no symlink followed on the way."""
    if src_fd is None:  # no dir_fd support (Windows): the scan's checks stand alone
        return read_image_file(src / rel, max_bytes=max_bytes, follow_symlinks=False)
    *folders, name = rel.split("/")
    opened: list[int] = []
    try:
        fd = src_fd
        for part in folders:
            try:
                fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise ImageError(
                        f"unreadable: {part!r} is no longer a folder (symlinks are not followed)"
                    ) from err
                raise ImageError(f"unreadable: {err.strerror or err}") from err
            opened.append(fd)
        return read_image_file(name, dir_fd=fd, max_bytes=max_bytes, follow_symlinks=False)
    finally:
        for fd in opened:
            os.close(fd)


def _open_source(src: Path) -> int | None:
    if os.open not in os.supports_dir_fd or os.stat not in os.supports_dir_fd:
        return None
    try:
        return os.open(src, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise DataError(f"cannot open the source {src}: {e.strerror or e}") from e


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
    split: str | tuple[float, float, float] = DEFAULT_SPLIT,
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    progress: Callable[[int], Any] | None = None,
    purpose: str | None = None,
    min_images: int = DEFAULT_MIN_IMAGES,
) -> ImportResult:
    """Import ``src`` into ``out_dir`` (``data/<name>``); see the module docstring.

    ``max_pixels``: the decompression-bomb limit (pixels declared by a header); ``max_file_bytes``:
    a larger file is rejected without being read (default 64 MiB). ``purpose`` (``pretrain`` or
    ``classify``; None: by layout) chooses the checks of :mod:`tessera.data.validate`, run before
    anything is written: a set that cannot serve its purpose raises :class:`DataError`.
    """
    src, out_dir = Path(src), Path(out_dir)
    if not src.is_dir():
        raise DataError(f"source {src} is not a folder: pass a folder of images (class sub-folders or flat)")
    if out_dir.resolve() == src.resolve() or src.resolve() in out_dir.resolve().parents:
        raise DataError(f"the output {out_dir} lies inside the source {src}: choose another --root")
    fractions = parse_fractions(split)
    layout, entries = scan(src)
    options = {
        "size": size,
        "split": list(fractions),
        "seed": seed,
        "max_pixels": max_pixels,
        "max_file_bytes": max_file_bytes,
    }
    purpose = purpose or default_purpose(layout)
    fp = fingerprint(src, entries, options)
    if _unchanged(out_dir, fp):
        manifest = read_manifest(out_dir)
        report = json.loads((out_dir / REPORT).read_text())
        stored = report.get("validation") or {}
        if stored.get("purpose", purpose) == purpose:
            return ImportResult(
                "unchanged",
                out_dir,
                manifest["counts"],
                manifest["total"],
                report["rejected"],
                report["converted"],
                stored.get("warnings", []),
                stored.get("steps", {}),
            )
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").exists():
        raise DataError(f"{out_dir} exists and is not a Tessera data set: choose another --name")

    rejected: list[dict[str, str]] = []
    converted: Counter[str] = Counter()
    good: list[tuple[Entry, Any]] = []
    seen: list[tuple[str, int, int]] = []  # per good image: content hash, width, height (for validate)
    src_fd = _open_source(src)
    try:
        for e in entries:
            if e.reason is None:
                try:
                    data = _read_beneath(src, src_fd, e.rel, max_file_bytes)
                    im = open_image(data, max_pixels=max_pixels)
                    good.append((e, square_resize(im, size)))
                    seen.append((sha256_bytes(data), im.size[0], im.size[1]))
                    mode = im.info.get("source_mode", "RGB")
                    if mode != "RGB":
                        converted[mode] += 1
                except ImageError as err:
                    e.reason = str(err)
            if e.reason is not None:
                rejected.append({"file": e.rel, "reason": e.reason})
            if progress:
                progress(1)
    finally:
        if src_fd is not None:
            os.close(src_fd)

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
    items = [Item(e.rel, str(splits.get(i, e.split)), e.cls, *seen[i]) for i, (e, _) in enumerate(good)]
    verdict = check(items, purpose, size, fractions, presplit=layout == "presplit", min_images=min_images)
    report["validation"] = verdict.as_dict()
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
        "imported",
        out_dir,
        manifest["counts"],
        len(files),
        rejected,
        dict(sorted(converted.items())),
        verdict.warnings,
        verdict.can,
    )
