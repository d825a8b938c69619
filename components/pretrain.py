"""Pretraining step: MAE (default), SimCLR or BYOL on the versioned image folder.

``python -m components.pretrain --params params.yaml [--preset cpu] --data DIR --out DIR`` (and
``tessera pretrain`` with the same options) reads the ``pretrain`` section, trains with AdamW +
warm-up/cosine (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"; Chen et al.
2020, SimCLR; Grill et al. 2020, BYOL) and writes ``OUT/encoder.pt`` (saved atomically every epoch,
so a rerun after a crash resumes), ``OUT/metrics.json`` and, for MAE, ``OUT/grids/recon_eNNN.png``.
Under ``torchrun --nproc_per_node N -m components.pretrain ...`` it trains data-parallel; only rank 0
writes files and reports to the tracker.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import typer

from components.command import DATA_VERSION_HELP, data_folder, parse_data_version, run_command
from tessera.config import load_params, section_of, to_dict
from tessera.errors import CheckpointError, ConfigError, TesseraError
from tessera.names import PRETRAIN_METHODS
from tessera.tracking import JsonTracker, NullTracker, Tracker

METHODS = PRETRAIN_METHODS
CHECKPOINT = "encoder.pt"
# Settings that may change between a crash and the rerun without changing the trajectory.
_RESUMABLE_CHANGES = {"num_workers", "compile", "grid_every", "device", "resume"}


@dataclasses.dataclass(frozen=True)
class Config:
    """The ``pretrain`` section of ``params.yaml``."""

    method: str = "mae"  # mae | simclr | byol
    arch: str = "mae_vit_mini_patch4"  # a registry name of that method (tessera.models.zoo)
    epochs: int = 10  # passes over the data
    batch_size: int = 128  # per process (under torchrun the global batch is this times the processes)
    lr: float = 1.0e-3  # peak AdamW learning rate, reached after the warm-up
    min_lr: float = 0.0  # the cosine decays to this
    weight_decay: float = 0.05  # AdamW weight decay (not on biases, norms, tokens)
    warmup_epochs: float = 1.0  # linear warm-up length in epochs
    mask_ratio: float = 0.75  # MAE: fraction of patches hidden from the encoder
    norm_pix_loss: bool = False  # MAE: per-patch normalised targets (off: inpainting needs pixels)
    temperature: float = 0.5  # SimCLR: NT-Xent temperature
    base_momentum: float = 0.99  # BYOL: EMA momentum at step 0, cosine-scheduled to 1
    augment: bool = True  # MAE: random resized crop + flip (SimCLR/BYOL always use their augmentations)
    seed: int = 0  # seeds initial weights, data order, masks and augmentations
    num_workers: int = 0  # DataLoader worker processes (0: load in the training process)
    compile: bool = False  # torch.compile the model (needs a C++ compiler on the CPU)
    amp: bool = True  # bf16 autocast on CUDA (ignored on the CPU)
    device: str = "auto"  # auto (CUDA if present) | cpu | cuda | cuda:N
    grid_every: int = 1  # MAE: write a reconstruction grid every N epochs (0: never)
    max_images: int = 0  # train on at most this many images (0: all)
    resume: bool = True  # continue from OUT/encoder.pt when it exists


def validate(cfg: Config) -> None:
    """Refuse settings that cannot train, naming the key."""
    from tessera.models import names
    from tessera.models.zoo import method_of

    if cfg.method not in METHODS:
        raise ConfigError(f"pretrain.method: {cfg.method!r} is not one of {METHODS}")
    if cfg.arch not in names():
        raise ConfigError(f"pretrain.arch: unknown model {cfg.arch!r}; registered: {names()}")
    if method_of(cfg.arch) != cfg.method:
        raise ConfigError(
            f"pretrain.arch {cfg.arch!r} is not a {cfg.method} model: pick a {cfg.method}_* name"
        )
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise ConfigError("pretrain.epochs must be >= 1 and pretrain.batch_size >= 2")
    if not 0.0 <= cfg.mask_ratio < 1.0:
        raise ConfigError(f"pretrain.mask_ratio must be in [0, 1), got {cfg.mask_ratio}")


def model_overrides(cfg: Config) -> dict[str, Any]:
    """The factory keyword arguments the config sets for its method."""
    if cfg.method == "mae":
        return {"mask_ratio": cfg.mask_ratio, "norm_pix_loss": cfg.norm_pix_loss}
    if cfg.method == "simclr":
        return {"temperature": cfg.temperature}
    return {"base_momentum": cfg.base_momentum}


def _check_same_run(
    ckpt: dict[str, Any], cfg: Config, data_version: dict[str, Any] | None, path: Path
) -> None:
    saved = dict(ckpt.get("extra", {}).get("pretrain", {}))
    now = to_dict(cfg)
    changed = sorted(k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k])
    hint = f"delete {path} (or pass --fresh) to start afresh"
    if changed:
        raise CheckpointError(f"cannot resume from {path}: pretrain settings {changed} differ; {hint}")
    old_md5 = (ckpt.get("data_version") or {}).get("md5")
    if old_md5 and data_version and data_version.get("md5") and old_md5 != data_version["md5"]:
        raise CheckpointError(f"cannot resume from {path}: it was trained on other data ({old_md5}); {hint}")


def run(
    cfg: Config,
    data_dir: str | Path,
    out_dir: str | Path,
    tracker: Tracker | None = None,
    *,
    data_version: str | dict[str, Any] | None,
    progress: bool = True,
) -> dict[str, float]:
    """Pretrain ``cfg.arch`` on ``data_dir``; write the checkpoint, metrics and grids to ``out_dir``.

    ``data_version`` (a dict, JSON or an md5; required) is stamped in the checkpoint as given.
    """
    from tessera.training import init_from_env, shutdown

    validate(cfg)
    env = init_from_env(cfg.device)
    try:
        return _train(
            cfg, Path(data_dir), Path(out_dir), tracker or NullTracker(), data_version, progress, env
        )
    finally:
        shutdown(env)


def _train(
    cfg: Config, data_dir: Path, out_dir: Path, tracker: Tracker, given_version: Any, progress: bool, env: Any
) -> dict[str, float]:
    import torch

    from tessera import checkpoint
    from tessera import training as tr
    from tessera.data.folder import load_pretraining_images
    from tessera.models import build, config_of, encoder_of
    from tessera.models.byol import momentum_at
    from tessera.training.methods import dataset_for, fit_size, loss_fn_for
    from tessera.viz import save_mae_grid

    version = parse_data_version(given_version, "pretrain")
    torch.manual_seed(cfg.seed)
    model = build(cfg.arch, **model_overrides(cfg)).to(env.device)
    model_cfg = config_of(cfg.arch, **model_overrides(cfg))
    images = load_pretraining_images(data_dir)  # (N, 3, H, W) in [0, 1]
    if cfg.max_images:
        images = images[: cfg.max_images]
    images = fit_size(images, encoder_of(model).img_size)
    # the same 8 images every epoch, spread over the set (the first ones are often one class)
    grid_images = images[torch.linspace(0, images.shape[0] - 1, min(8, images.shape[0])).long()]
    dataset = dataset_for(cfg.method, images, cfg.augment)
    loader = tr.make_loader(dataset, cfg.batch_size, env, cfg.seed, cfg.num_workers)
    optimizer = tr.make_optimizer(model, cfg.lr, cfg.weight_decay)
    ckpt_path = out_dir / CHECKPOINT
    history: list[dict[str, float]] = []
    start_epoch = start_step = 0
    ckpt = tr.resume(ckpt_path, model, optimizer, arch=cfg.arch, config=model_cfg) if cfg.resume else None
    if ckpt is not None:
        _check_same_run(ckpt, cfg, version, ckpt_path)
        start_epoch, start_step = int(ckpt["epoch"]), int(ckpt["step"])
        history = list(ckpt["extra"].get("history", []))
        if env.is_main:  # the step's own output (the flow logs it): say that it resumed
            from tessera.training.resume import resumed_from

            print(f"pretrain: {resumed_from(ckpt, ckpt_path, cfg.epochs)}", flush=True)
    total_steps = cfg.epochs * len(loader)

    def after_step(step: int) -> None:
        model.update_target(momentum_at(step, total_steps, cfg.base_momentum))  # type: ignore[operator]

    def on_epoch_end(epoch: int, step: int, metrics: dict[str, float]) -> None:
        history.append({"epoch": epoch, "step": step, **metrics})
        if not env.is_main:
            return
        tracker.log_metrics({f"pretrain/{k}": v for k, v in metrics.items()}, step=epoch)
        extra = {
            "method": cfg.method,
            "pretrain": to_dict(cfg),
            "history": history,
            "steps_per_epoch": len(loader),
        }
        checkpoint.save(
            checkpoint.make(
                cfg.arch,
                model_cfg,
                model.state_dict(),
                optimizer=optimizer.state_dict(),
                epoch=epoch,
                step=step,
                data_version=version,
                extra=extra,
                rng=tr.rng_state(),
            ),
            ckpt_path,
        )
        if cfg.method == "mae" and cfg.grid_every and (epoch % cfg.grid_every == 0 or epoch == cfg.epochs):
            grid = out_dir / "grids" / f"recon_e{epoch:03d}.png"
            tracker.log_artifact(save_mae_grid(model, grid_images, grid, cfg.seed))  # type: ignore[arg-type]

    trained = tr.wrap(model, env)
    if cfg.compile:
        trained = torch.compile(trained)  # type: ignore[assignment]
    step = tr.fit(
        trained,
        loader,
        optimizer,
        loss_fn=loss_fn_for(cfg.method),
        settings=tr.LoopSettings(cfg.epochs, cfg.lr, cfg.min_lr, cfg.warmup_epochs, cfg.amp, 0.0, cfg.seed),
        env=env,
        start_epoch=start_epoch,
        start_step=start_step,
        after_step=after_step if cfg.method == "byol" else None,
        on_epoch_end=on_epoch_end,
        progress=progress,
    )
    speeds = sorted(h["images_per_s"] for h in history) or [0.0]
    result = {
        "loss": float(history[-1]["loss"]) if history else float("nan"),
        "epochs": float(cfg.epochs),
        "steps": float(step),
        "images_per_s": float(speeds[len(speeds) // 2]),  # the median epoch
        "train_seconds": float(sum(h["seconds"] for h in history)),
        "images": float(len(dataset)),
    }
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def execute(
    params: str,
    preset: str | None,
    data: str | None,
    out: str,
    data_version: str | None,
    fresh: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    """Shared by ``main`` and ``cli``: read params, pick the data folder, run with a JSON-lines tracker."""
    all_params = load_params(params, preset)
    cfg = section_of(Config, all_params, "pretrain")
    if fresh:
        cfg = dataclasses.replace(cfg, resume=False)
    data = data or str(data_folder(all_params))
    tracker = JsonTracker(Path(out) / "tracker.jsonl")
    metrics = run(cfg, data, out, tracker, data_version=data_version, progress=progress)
    print(json.dumps(metrics))
    return metrics


def main(argv: list[str] | None = None) -> None:
    """``python -m components.pretrain --params params.yaml [--preset cpu] --data DIR --out DIR``."""
    run_command(cli, argv, "python -m components.pretrain")


def cli(
    params: str = typer.Option("params.yaml", "--params", help="params file (section `pretrain`)"),
    preset: str | None = typer.Option(None, "--preset", help="overlay params.<preset>.yaml (cpu, gpu)"),
    data: str | None = typer.Option(None, "--data", help="image folder (default: data/<data.name>)"),
    out: str = typer.Option("runs/pretrain", "--out", help="output folder"),
    data_version: str | None = typer.Option(None, "--data-version", help=DATA_VERSION_HELP),
    fresh: bool = typer.Option(False, "--fresh", help="ignore an existing checkpoint in --out"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
) -> None:
    """Pretrain an encoder (MAE by default; SimCLR, BYOL) and write OUT/encoder.pt, metrics.json."""
    try:
        execute(params, preset, data, out, data_version, fresh, not no_progress)
    except TesseraError as e:
        typer.echo(f"pretrain: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(2) from e


if __name__ == "__main__":
    main()
