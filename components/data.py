"""Data step: build, import, corrupt and version image data sets.

``python -m components.data build --params params.yaml [--preset cpu]`` (and ``tessera data build``)
writes ``data/<data.name>/`` from the ``data`` section: the embedded digits + photo patches
(:mod:`tessera.data.embedded`), or, when ``data.source`` is a folder, an import of it.
``tessera data import SRC --name NAME`` imports a user's folder with a rejection report
(:mod:`tessera.data.importer`). ``tessera data corrupt`` writes ``data/<name>-c/`` from the
``corrupt`` section (Hendrycks & Dietterich 2019, :mod:`tessera.corruptions`). Each command returns
the folder it wrote; the DVC data version of it is the command line's business (``cli/data.py``:
``tessera data version``), since a step never talks to DVC.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from tessera.config import load_params, section_of, to_dict
from tessera.errors import TesseraError
from tessera.names import CORRUPTIONS, DEFAULT_SPLIT, EXTRA_CORRUPTIONS
from tessera.tracking import JsonTracker, NullTracker, Tracker

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class Config:
    """The ``data`` section of ``params.yaml``."""

    name: str = "digits"  # the data set every step uses: data/<name>/
    source: str = "embedded"  # embedded (digits + photo patches from installed wheels) | a folder to import
    root: str = "data"  # where data sets live
    seed: int = 0  # fixes the split and the patch positions
    split: tuple[float, float, float] = DEFAULT_SPLIT  # train, val, test fractions (stratified)
    image_size: int = 32  # images are image_size x image_size RGB
    unlabeled_patches: int = 2000  # embedded: patches cut from the shipped photographs
    max_pixels: int = 40_000_000  # import: larger images are rejected (decompression-bomb guard)
    max_file_bytes: int = 64 * 1024**2  # import: larger files are rejected without being read
    purpose: str = ""  # import: pretrain | classify (the checks at import; "": by the folder's layout)
    min_images: int = 16  # import: fewer readable images than this cannot be pretrained on


@dataclasses.dataclass(frozen=True)
class CorruptConfig:
    """The ``corrupt`` section of ``params.yaml``."""

    corruptions: tuple[str, ...] = CORRUPTIONS  # the 15 ImageNet-C / CIFAR-10-C corruptions
    extras: bool = False  # also the 4 extra ones: speckle_noise, gaussian_blur, spatter, saturate
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)  # 1 (mild) to 5 (severe)
    max_per_class: int = 0  # corrupt the first N test images of each class (0: all)
    seed: int = 0  # run seed; each image's seed derives from it, the corruption, severity and index
    workers: int = 2  # worker processes (one (corruption, severity) cell at a time each)


def friendly(fn: F) -> F:
    """Turn Tessera's errors into one red line and exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TesseraError as e:
            typer.secho(f"data: {type(e).__name__}: {e}", fg="red", err=True)
            raise typer.Exit(2) from e

    return wrapper  # type: ignore[return-value]


def _bar(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=None)


def _write_metrics(out_dir: str | Path, metrics: dict[str, float]) -> None:
    """OUT/metrics.json without the wall-clock ``seconds``: dvc.lock records this file's md5, so
    with the time in it every ``dvc repro`` of the same data changed dvc.lock (a checkout left dirty
    by each `make demo`). The time still goes to the tracker and the step's return value."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stable = {k: v for k, v in metrics.items() if k != "seconds"}
    (out / "metrics.json").write_text(json.dumps(stable, indent=1, sort_keys=True) + "\n")


def _flat_counts(counts: dict[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for split, v in counts.items():
        flat[f"images/{split}"] = float(sum(v.values()) if isinstance(v, dict) else v)
    return flat


def run_build(
    cfg: Config, out_dir: str | Path = "runs/data", tracker: Tracker | None = None
) -> dict[str, float]:
    """Build (or import) ``<root>/<name>``; metrics: image counts per split and seconds."""
    from tessera.data.importer import dataset_dir

    tracker = tracker or NullTracker()
    target = dataset_dir(cfg.root, cfg.name)  # data.name: a safe name inside data.root, as for import
    start = time.perf_counter()
    if cfg.source == "embedded":
        from tessera.data.embedded import build_embedded

        with _bar(1797 + cfg.unlabeled_patches, f"build {cfg.name}") as bar:
            manifest = build_embedded(
                target,
                name=cfg.name,
                seed=cfg.seed,
                fractions=cfg.split,
                image_size=cfg.image_size,
                unlabeled_patches=cfg.unlabeled_patches,
                progress=bar.update,
            )
        counts = manifest["counts"]
    else:
        result = _import(
            Path(cfg.source),
            target,
            cfg.image_size,
            cfg.split,
            cfg.seed,
            cfg.max_pixels,
            cfg.max_file_bytes,
            cfg.purpose or None,
            cfg.min_images,
        )
        counts = result.counts
    metrics = _flat_counts(counts) | {"seconds": time.perf_counter() - start}
    tracker.log_metrics(metrics, step=0)
    _write_metrics(out_dir, metrics)
    return metrics


def _import(
    src: Path,
    target: Path,
    size: int,
    split: Any,
    seed: int,
    max_pixels: int,
    max_file_bytes: int,
    purpose: str | None = None,
    min_images: int = 16,
) -> Any:
    from tessera.data.importer import import_folder, scan

    with _bar(len(scan(src)[1]) if src.is_dir() else 0, f"import {target.name}") as bar:
        result = import_folder(
            src,
            target,
            size=size,
            split=split,
            seed=seed,
            max_pixels=max_pixels,
            max_file_bytes=max_file_bytes,
            progress=bar.update,
            purpose=purpose,
            min_images=min_images,
        )
    if result.rejected:
        width = max(len(r["file"]) for r in result.rejected)
        typer.echo(f"rejected {len(result.rejected)} file(s) (report: {target / 'import_report.json'}):")
        typer.echo(f"  {'file'.ljust(width)}  reason")
        for r in result.rejected:
            typer.echo(f"  {r['file'].ljust(width)}  {r['reason']}")
    if result.converted:
        typer.echo("converted to RGB: " + ", ".join(f"{k} x{v}" for k, v in result.converted.items()))
    for w in result.warnings:
        typer.echo(f"warning: {w}")
    if result.steps:
        typer.echo("what the later steps can do with it:")
        for step, can in result.steps.items():
            typer.echo(f"  {step:<9} {can}")
    return result


def corrupt_config(cfg: CorruptConfig) -> tuple[list[str], list[int]]:
    """The corruptions (with the extras when asked) and severities a config selects."""
    names = list(cfg.corruptions) + [c for c in EXTRA_CORRUPTIONS if cfg.extras and c not in cfg.corruptions]
    return names, [int(s) for s in cfg.severities]


def run_corrupt(
    cfg: CorruptConfig,
    data_dir: str | Path,
    out_root: str | Path,
    out_dir: str | Path = "runs/corrupt",
    tracker: Tracker | None = None,
) -> dict[str, float]:
    """Write the corrupted test split ``out_root`` (e.g. ``data/digits-c``) and its contact sheet."""
    from tessera.corruptions.suite import corrupt_dataset, list_test_images

    tracker = tracker or NullTracker()
    names, severities = corrupt_config(cfg)
    start = time.perf_counter()
    n = len(list_test_images(Path(data_dir), cfg.max_per_class)[0])
    with _bar(n * len(names) * len(severities), f"corrupt {Path(data_dir).name}") as bar:
        manifest = corrupt_dataset(
            data_dir,
            out_root,
            names,
            severities,
            seed=cfg.seed,
            max_per_class=cfg.max_per_class,
            workers=cfg.workers,
            progress=bar.update,
        )
    metrics = {
        "images": float(manifest["total"]),
        "images_per_cell": float(manifest["images_per_cell"]),
        "corruptions": float(len(names)),
        "severities": float(len(severities)),
        "seconds": time.perf_counter() - start,
    }
    tracker.log_metrics(metrics, step=0)
    tracker.log_artifact(Path(out_root) / "contact_sheet.png")
    _write_metrics(out_dir, metrics)
    return metrics


app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Build, import and corrupt image data sets.",
)


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


@app.command("build")
@friendly
def build_cli(
    params: str = typer.Option("params.yaml", "--params", help="params file (section `data`)"),
    preset: str | None = typer.Option(None, "--preset", help="overlay params.<preset>.yaml (cpu, gpu)"),
    name: str | None = typer.Option(None, "--name", help="data set name (default: data.name)"),
    out: str = typer.Option("runs/data", "--out", help="folder for metrics.json"),
) -> Path:
    """Build data/<name>/ from the `data` section: the embedded digits + photo patches, or an import."""
    cfg = section_of(Config, load_params(params, preset), "data")
    cfg = dataclasses.replace(cfg, name=name) if name else cfg
    metrics = run_build(cfg, out, JsonTracker(Path(out) / "log.jsonl"))
    _summary(Path(cfg.root) / cfg.name, metrics)
    return Path(cfg.root) / cfg.name


@app.command("import")
@friendly
def import_cli(
    src: Path = typer.Argument(..., help="image folder: <class>/ sub-folders, train/val/test/, or flat"),
    name: str = typer.Option(
        ..., "--name", help="data set name (letters, digits, . _ -; no /): writes <root>/<name>/"
    ),
    size: int = typer.Option(32, "--size", help="output images are size x size RGB"),
    split: str = typer.Option(
        ",".join(f"{f:g}" for f in DEFAULT_SPLIT),
        "--split",
        help="train,val,test fractions when not pre-split (as data.split)",
    ),
    purpose: str = typer.Option(
        "",
        "--purpose",
        help="pretrain (only enough readable images) or classify (labels usable in every split);"
        " default: pretrain for a flat folder, classify for class folders",
    ),
    min_images: int = typer.Option(16, "--min-images", help="fewer readable images: the import fails"),
    seed: int = typer.Option(0, "--seed", help="seed of the stratified split"),
    root: str = typer.Option("data", "--root", help="where data sets live"),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels", help="decompression-bomb limit"),
    max_file_bytes: int = typer.Option(
        64 * 1024**2, "--max-file-bytes", help="larger files are rejected unread"
    ),
) -> Path:
    """Import a folder of images, checking every file; bad files go to a rejection report."""
    from tessera.data.importer import dataset_dir

    start = time.perf_counter()
    target = dataset_dir(root, name)  # ConfigError (exit 2, nothing written) for ../x, /abs, ..
    result = _import(src, target, size, split, seed, max_pixels, max_file_bytes, purpose or None, min_images)
    typer.echo(f"{result.status}: {result.imported} images, {len(result.rejected)} rejected")
    _summary(result.out_dir, _flat_counts(result.counts) | {"seconds": time.perf_counter() - start})
    return Path(result.out_dir)


@app.command("corrupt")
@friendly
def corrupt_cli(
    name: str | None = typer.Option(None, "--name", help="data set (default: data.name)"),
    params: str = typer.Option("params.yaml", "--params", help="params file (sections `data`, `corrupt`)"),
    preset: str | None = typer.Option(None, "--preset", help="overlay params.<preset>.yaml (cpu, gpu)"),
    corruptions: str | None = typer.Option(None, "--corruptions", help="comma list (default: corrupt.*)"),
    severities: str | None = typer.Option(None, "--severities", help="comma list of 1-5"),
    extras: bool | None = typer.Option(None, "--extras/--no-extras", help="add the 4 extra corruptions"),
    max_per_class: int | None = typer.Option(None, "--max-per-class", help="test images per class (0: all)"),
    workers: int | None = typer.Option(None, "--workers", help="worker processes"),
    out: str = typer.Option("runs/corrupt", "--out", help="folder for metrics.json"),
) -> Path:
    """Write data/<name>-c/<corruption>/<severity>/<class>/ from the test split + a contact sheet."""
    p = load_params(params, preset) if Path(params).exists() else {}
    data_cfg = section_of(Config, p, "data")
    cfg = section_of(CorruptConfig, p, "corrupt")
    changes: dict[str, Any] = {
        "corruptions": tuple(_csv(corruptions) or ()) or None,
        "severities": tuple(int(s) for s in _csv(severities) or ()) or None,
        "extras": extras,
        "max_per_class": max_per_class,
        "workers": workers,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    name = name or data_cfg.name
    out_root = Path(data_cfg.root) / f"{name}-c"
    tracker = JsonTracker(Path(out) / "log.jsonl")
    metrics = run_corrupt(cfg, Path(data_cfg.root) / name, out_root, out, tracker)
    _summary(out_root, metrics)
    typer.echo(f"contact sheet: {out_root / 'contact_sheet.png'}")
    return out_root


def _summary(folder: Path, metrics: dict[str, float]) -> None:
    counts = ", ".join(f"{k.split('/', 1)[-1]} {int(v)}" for k, v in metrics.items() if k != "seconds")
    typer.echo(f"{folder}: {counts} ({metrics.get('seconds', 0.0):.1f} s)")


def main(argv: list[str] | None = None) -> int:
    """``python -m components.data {build,import,corrupt} ...``; returns the exit code."""
    import click

    try:
        # click returns an Exit's code under standalone_mode=False; the commands return the folder
        result = app(args=argv, prog_name="python -m components.data", standalone_mode=False)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.ClickException as e:
        e.show()
        return int(e.exit_code)
    return result if isinstance(result, int) else 0


__all__ = ["Config", "CorruptConfig", "app", "main", "run_build", "run_corrupt", "to_dict"]

if __name__ == "__main__":
    raise SystemExit(main())
