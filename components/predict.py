"""Offline batch inference without a server: ``tessera embed DIR`` and ``tessera predict DIR [--ttt]``.

The same models and preprocessing as the TorchServe endpoints (the guarded ``open_image``, centre crop
and resize to the model's side, ``embed`` for embeddings, TTT-MAE of Gandelsman et al. 2022 for
``--ttt``), over every image under a folder, with a progress bar. Unreadable files are skipped and
reported (in the output's ``skipped`` list and on stderr), never fatal.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import typer

LABEL_HELP = "How the output names the model (default: --model)."
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def load_model(
    ref: str, arch_modules: tuple[str, ...] = ("tessera.adapt.heads",)
) -> tuple[Any, dict[str, Any]]:
    """A checkpoint path -> (model in eval mode, checkpoint dict).

    A ``models:/NAME@alias`` is the registry's business: ``tessera embed`` / ``tessera predict``
    (``cli/steps.py``) download it and hand this step the local checkpoint.
    """
    import importlib

    from tessera import checkpoint
    from tessera.errors import CheckpointError
    from tessera.models.registry import from_checkpoint

    if ref.startswith("models:/"):
        raise CheckpointError(
            f"{ref} is a registry URI: run `tessera embed`/`tessera predict` (they download it), "
            "or pass a checkpoint file"
        )
    for module in arch_modules:
        importlib.import_module(module)
    ckpt = checkpoint.load(ref)
    return from_checkpoint(ckpt).eval(), ckpt


def read_folder(root: Path, size: int) -> tuple[list[str], Any, list[dict[str, str]]]:
    """Every image under ``root`` -> (relative paths, (N, 3, size, size) in [0, 1], skipped files)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from tessera.data.images import open_image, square_resize
    from tessera.errors import ImageError

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES or p.is_fifo())
    names, arrays, skipped = [], [], []
    for f in tqdm(files, desc="reading", unit="img"):
        try:
            arrays.append(np.asarray(square_resize(open_image(f), size), dtype=np.uint8))
            names.append(str(f.relative_to(root)))
        except ImageError as e:
            skipped.append({"path": str(f.relative_to(root)), "error": str(e)})
    if not arrays:
        return names, torch.empty(0, 3, size, size), skipped
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, S, S)
    return names, x, skipped


def write(rows: list[dict[str, Any]], skipped: list[dict[str, str]], out: Path, meta: dict[str, Any]) -> None:
    """CSV (one row per image, skipped files in ``<out>.skipped.csv``) or JSON (everything in one file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps({**meta, "results": rows, "skipped": skipped}, indent=2))
        return
    with out.open("w", newline="") as fh:
        fields = list(rows[0]) if rows else ["path"]
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    if skipped:
        with out.with_suffix(".skipped.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["path", "error"])
            writer.writeheader()
            writer.writerows(skipped)


def _report(n: int, skipped: list[dict[str, str]], out: Path) -> None:
    typer.echo(f"{n} images -> {out}; {len(skipped)} skipped")
    for s in skipped:
        typer.echo(f"  skipped {s['path']}: {s['error']}", err=True)


def _data_version(ckpt: dict[str, Any]) -> str:
    dv = ckpt.get("data_version")
    return str(dv.get("md5")) if isinstance(dv, dict) else str(dv or "unknown")


def embed_cli(
    folder: Path = typer.Argument(..., help="Folder of images (searched recursively)."),
    model: str = typer.Option(..., "--model", help="Encoder checkpoint or models:/tessera-encoder@champion."),
    out: Path = typer.Option(Path("embeddings.csv"), help="Output .csv or .json."),
    batch_size: int = typer.Option(256, help="Images per forward pass."),
    model_label: str | None = typer.Option(
        None, "--model-label", hidden=True, help="How outputs name the model."
    ),
) -> None:
    """Embed every image of FOLDER (the endpoint's embedding) into a CSV/JSON."""
    from tessera.models.embed import embed, encoder_of

    net, ckpt = load_model(model)
    names, x, skipped = read_folder(folder, encoder_of(net).img_size)
    z = embed(net, x, batch_size=batch_size)  # (N, D)
    rows = [
        {"path": n, **{f"e{j}": round(float(v), 6) for j, v in enumerate(vec)}}
        for n, vec in zip(names, z, strict=True)
    ]
    write(
        rows,
        skipped,
        out,
        {"model": model_label or model, "data_version": _data_version(ckpt), "dim": int(z.shape[1])},
    )
    _report(len(rows), skipped, out)


def predict_cli(
    folder: Path = typer.Argument(..., help="Folder of images (searched recursively)."),
    model: str = typer.Option(
        ..., "--model", help="TTT classifier checkpoint or models:/tessera-ttt-classifier@champion."
    ),
    out: Path = typer.Option(Path("predictions.csv"), help="Output .csv or .json."),
    method: str | None = typer.Option(
        None,
        "--method",
        help="none, normstat, tent_episodic or ttt_mae_episodic (default: the checkpoint's policy).",
    ),
    ttt: bool = typer.Option(False, "--ttt", help="Same as --method ttt_mae_episodic."),
    steps: int = typer.Option(-1, help="TTT steps (-1: the policy's, else the checkpoint's default)."),
    copies: int = typer.Option(-1, help="TTT masked copies per step (-1: as for --steps)."),
    seed: int = typer.Option(0, help="Seed of the TTT masks."),
    model_label: str | None = typer.Option(
        None, "--model-label", hidden=True, help="How outputs name the model."
    ),
) -> None:
    """Classify every image of FOLDER, with per-image TTT-MAE when the release's adaptation policy (or
    --method / --ttt / --steps) says so, into a CSV/JSON that names the method and the policy."""
    import torch
    from tqdm import tqdm

    from tessera.adapt.policy import NONE, resolve
    from tessera.errors import ConfigError
    from tessera.names import ttt_defaults

    net, ckpt = load_model(model)
    classes = list(ckpt.get("classes") or [str(k) for k in range(net.num_classes)])
    names, x, skipped = read_folder(folder, net.encoder.img_size)
    with torch.no_grad():
        before = (
            torch.cat([net(x[i : i + 256]).softmax(1) for i in range(0, len(x), 256)])
            if len(x)
            else torch.empty(0, len(classes))
        )
    d = ttt_defaults((ckpt.get("extra") or {}).get("ttt"))
    asked = {k: v for k, v in (("steps", steps), ("copies", copies)) if v >= (0 if k == "steps" else 1)}
    try:
        decision = resolve(
            (ckpt.get("extra") or {}).get("policy"), "ttt_mae_episodic" if ttt else method, asked, NONE, d
        )
    except ValueError as e:
        raise ConfigError(str(e)) from e
    ttt = decision.method != NONE
    after, losses = before, None
    if decision.method in ("normstat", "tent_episodic") and len(x):
        from tessera.adapt.evaluation import per_request

        n = max(1, int(decision.budget.get("request_images", 16)))  # as the policy measured it
        chunks = [x[i : i + n] for i in range(0, len(x), n)]
        after = torch.cat([per_request(decision.method, net, c, decision.budget).detach() for c in chunks])
    elif ttt and len(x):
        from tessera.adapt.test_time import TTTSettings
        from tessera.adapt.ttt_mae import ttt_mae_trainer

        settings = TTTSettings(
            steps=int(decision.budget["steps"]),
            copies=int(decision.budget["copies"]),
            lr=float(d["lr"]),
            momentum=float(d["momentum"]),
            mask_ratio=float(d["mask_ratio"]),
            seed=seed,
        )
        trainer = ttt_mae_trainer(net, settings)
        outs = [trainer.run(x[i : i + 1], i) for i in tqdm(range(len(x)), desc="TTT", unit="img")]
        after, losses = torch.cat([p for p, _ in outs]), torch.cat([loss for _, loss in outs])
    rows = []
    for i, name in enumerate(names):
        k, k0 = int(after[i].argmax()), int(before[i].argmax())
        row: dict[str, Any] = {"path": name, "class": classes[k], "confidence": round(float(after[i, k]), 6)}
        if ttt:
            row.update(
                class_before=classes[k0],
                confidence_before=round(float(before[i, k0]), 6),
                ttt_loss_last=round(float(losses[i, -1]), 6)
                if losses is not None and losses.shape[1]
                else "",
            )
        rows.append(row)
    write(
        rows,
        skipped,
        out,
        {
            "model": model_label or model,
            "data_version": _data_version(ckpt),
            "classes": classes,
            "ttt": ttt,
            "method": decision.method,
            "method_source": decision.source,
            "policy_version": decision.policy_version,
        },
    )
    _report(len(rows), skipped, out)
