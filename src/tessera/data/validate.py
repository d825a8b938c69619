"""Is an imported data set fit for its purpose? Checked at import, before anything is written.

``purpose`` says what the set is for:

* ``pretrain`` (the default for a flat folder): self-supervised pretraining, the generator and
  inpainting need no labels, only at least ``min_images`` readable images;
* ``classify`` (the default for class or split folders): the adaptation and evaluation steps also
  need labels, so the import **fails** when there is a single class, or a class that would miss a
  split that is not empty by design (too few images to appear in train, val and test; the classes
  are named).

Warnings (the import goes on, and they are in the report): images smaller than the output size (they
are upscaled: the report states the smallest and the factor), and identical files in different
splits (by content hash: a train/test leak). The report ends with what each later step can do with
the set.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from tessera.errors import DataError

PURPOSES = ("pretrain", "classify")
DEFAULT_MIN_IMAGES = 16  # pretraining on fewer than this many images is not worth a run


@dataclass
class Item:
    """One readable image as the import assigned it."""

    rel: str  # path in the source folder
    split: str  # train / val / test / unlabeled
    cls: str | None  # class name (None in the pool)
    digest: str  # sha256 of the source file's bytes
    width: int  # size before the square resize
    height: int


@dataclass
class Verdict:
    """What the checks found: warnings for the report, and what each later step can do."""

    purpose: str
    warnings: list[str] = field(default_factory=list)
    can: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"purpose": self.purpose, "warnings": list(self.warnings), "steps": dict(self.can)}


def default_purpose(layout: str) -> str:
    """``pretrain`` for a flat folder (an unlabelled pool), ``classify`` for class or split folders."""
    return "pretrain" if layout == "flat" else "classify"


def check(
    items: list[Item],
    purpose: str,
    size: int,
    fractions: tuple[float, float, float],
    *,
    presplit: bool = False,
    min_images: int = DEFAULT_MIN_IMAGES,
) -> Verdict:
    """Check ``items`` for ``purpose``; raise :class:`DataError` naming what cannot work."""
    if purpose not in PURPOSES:
        raise DataError(f"--purpose {purpose!r}: use one of {list(PURPOSES)}")
    labelled = [it for it in items if it.cls is not None]
    pool = [it for it in items if it.cls is None]
    if purpose == "pretrain" and len(items) < min_images:
        raise DataError(
            f"only {len(items)} readable image(s): pretraining needs at least {min_images}; add images"
        )
    if purpose == "classify":
        _check_labels(labelled, fractions, presplit)
    verdict = Verdict(purpose)
    small = [it for it in items if min(it.width, it.height) < size]
    if small:
        tiny = min(small, key=lambda it: min(it.width, it.height))
        side = min(tiny.width, tiny.height)
        verdict.warnings.append(
            f"{len(small)} image(s) are smaller than {size} px and were upscaled; the smallest,"
            f" {tiny.rel} ({tiny.width}x{tiny.height}), by {size / max(side, 1):.1f}x"
        )
    verdict.warnings += _leaks(items)
    verdict.can = _what_steps_can_do(labelled, pool, purpose)
    return verdict


def _check_labels(labelled: list[Item], fractions: tuple[float, float, float], presplit: bool) -> None:
    classes = sorted({it.cls for it in labelled if it.cls is not None})
    if not classes:
        raise DataError(
            "no class folders: --purpose classify needs <class>/ sub-folders (a flat folder is an"
            " unlabelled pool: import it with --purpose pretrain)"
        )
    if len(classes) == 1:
        raise DataError(f"a single class ({classes[0]}): classification needs at least two classes")
    nonempty = [s for s, f in zip(("train", "val", "test"), fractions, strict=True) if f > 0]
    wanted = ["train", "test"] if presplit else nonempty
    per_class: dict[str, Counter[str]] = defaultdict(Counter)
    for it in labelled:
        per_class[str(it.cls)][it.split] += 1
    missing = {c: [s for s in wanted if per_class[c][s] == 0] for c in classes}
    missing = {c: m for c, m in missing.items() if m}
    if missing:
        shown = ", ".join(
            f"{c} ({sum(per_class[c].values())} image(s), none in {'/'.join(m)})"
            for c, m in sorted(missing.items())[:10]
        )
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DataError(
            f"{len(missing)} class(es) too small to appear in every split: {shown}{more}. Add images to"
            " them, drop them, or change --split"
        )


def _leaks(items: list[Item]) -> list[str]:
    by_digest: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        by_digest[it.digest].append(it)
    crossing = [group for group in by_digest.values() if len({it.split for it in group}) > 1]
    if not crossing:
        return []
    example = crossing[0]
    pair = " = ".join(f"{it.rel} ({it.split})" for it in example[:2])
    return [
        f"{len(crossing)} file(s) are identical across splits (a train/test leak), e.g. {pair}:"
        " remove the duplicates from the source"
    ]


def _what_steps_can_do(labelled: list[Item], pool: list[Item], purpose: str) -> dict[str, str]:
    train = [it for it in labelled if it.split == "train"] + pool
    test = [it for it in labelled if it.split == "test"]
    classes = len({it.cls for it in labelled})
    out = {
        "pretrain": f"yes: {len(train)} images (train split and pool)",
        "generator": f"yes: {len(train)} images",
        "inpaint": "yes",
    }
    if purpose == "classify" and classes >= 2:
        out["adapt"] = f"yes: {classes} classes"
        out["evaluate"] = f"yes: {len(test)} test images, corrupted by `tessera data corrupt`"
    else:
        reason = "no labels" if not labelled else "imported for pretraining (--purpose pretrain)"
        out["adapt"] = out["evaluate"] = f"no: {reason}"
    return out
