"""Train the instance-conditioned GAN on a frozen Tessera encoder (IC-GAN, Casanova et al. 2021).

``python -m components.train_generator --params params.yaml [--preset cpu] --data DIR --encoder CKPT
--out DIR`` (or ``tessera train-generator``) reads the ``generator`` section of ``params.yaml``, embeds
the training images with the encoder, finds each one's k nearest neighbours (cached per data and
encoder version), trains G and D, and writes to ``--out``:

* ``generator.pt``: the ``icgan`` bundle (EMA generator + encoder + bank of training embeddings), with
  the full training state in ``extra["train"]``; saved every epoch, and a rerun resumes from it;
* ``metrics.json``: the final encoder-space ``fd``/``kid`` (with ``n_real``/``n_fake``) and the
  untrained generator's ``fd_initial``/``kid_initial`` for reference;
* ``grids/samples_epochNNN.png`` per epoch (0 = untrained) and ``grids/samples.png``: rows =
  conditioning instances, the instance itself in the first column.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from components.command import DATA_VERSION_HELP, parse_data_version, run_command

SECTION = "generator"
CHECKPOINT = "generator.pt"


@dataclass(frozen=True)
class Config:
    """The ``generator`` section of ``params.yaml``."""

    enabled: bool = True  # train a generator in the retrain flow (false: the release has none)
    epochs: int = 2  # passes; each is `steps_per_epoch` generator steps, then a checkpoint + FD/KID
    steps_per_epoch: int = 60  # 0 = one pass over the training images (N // batch_size steps)
    batch_size: int = 32  # images per D and per G step
    d_steps: int = 1  # discriminator steps per generator step
    k: int = 50  # neighbourhood size in embedding space (IC-GAN: 50); capped at the image count
    z_dim: int = 64  # noise dimension
    g_ch: int = 24  # generator width (channels in every block)
    d_ch: int = 24  # discriminator width
    cond_dim: int = 64  # size of the projected instance embedding fed to conditional BatchNorm
    lr_g: float = 2.0e-4  # Adam learning rate of G
    lr_d: float = 2.0e-4  # Adam learning rate of D
    beta1: float = 0.0  # Adam beta1 (BigGAN: 0)
    beta2: float = 0.999  # Adam beta2
    ema_decay: float = 0.999  # EMA of G's weights (ramped up over the first steps)
    max_images: int = 0  # use at most this many training images (0 = all)
    include_unlabeled: bool = False  # also train on the unlabelled pool (data/<name>/unlabeled/)
    eval_samples: int = 128  # generated and real images per FD/KID evaluation
    kid_subset_size: int = 64  # KID subset size (capped at the sample counts)
    kid_subsets: int = 50  # KID subsets averaged
    grid_rows: int = 6  # conditioning instances in the sample grid
    grid_cols: int = 7  # samples per instance in the grid
    seed: int = 0  # initialisation, sampling and evaluation seed
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True  # tqdm bar per epoch


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_encoder(path: str | Path) -> tuple[Any, str, dict[str, Any]]:
    """An encoder checkpoint -> (model, arch, config); ModelError if it holds no ViT encoder."""
    from tessera import checkpoint
    from tessera.errors import ModelError
    from tessera.models.embed import encoder_of
    from tessera.models.registry import from_checkpoint

    ckpt = checkpoint.load(path)
    model = from_checkpoint(ckpt).eval()
    try:
        encoder_of(model)
    except TypeError as e:
        raise ModelError(f"{path} holds a {ckpt['arch']!r} model without a ViT encoder: {e}") from e
    return model, ckpt["arch"], dict(ckpt["config"])


def run(
    cfg: Config,
    data_dir: str | Path,
    encoder_ckpt: str | Path,
    out_dir: str | Path,
    tracker: Any = None,
    *,
    data_version: str | dict[str, Any] | None,
) -> dict[str, float]:
    """Train (or resume) the generator; return the metrics also written to ``out_dir/metrics.json``.

    ``data_version`` (required) is the version of ``data_dir``, stamped in every checkpoint.
    """
    import torch

    from tessera import checkpoint
    from tessera.config import to_dict
    from tessera.data.folder import load_pretraining_images, load_split
    from tessera.errors import CheckpointError, DataError
    from tessera.generators.bundle import ARCH, ICGAN
    from tessera.generators.grid import instance_grid
    from tessera.generators.metrics import EncoderSpaceScore
    from tessera.generators.neighbours import digest_module, digest_tensor, neighbourhoods
    from tessera.generators.sampling import draw, generate, resize_to
    from tessera.generators.trainer import build_state, train_epoch
    from tessera.tracking import NullTracker

    version = parse_data_version(data_version, "train-generator")
    tracker = tracker or NullTracker()
    out, t0 = Path(out_dir), time.time()
    grids = out / "grids"
    grids.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.device)
    encoder, enc_arch, enc_config = load_encoder(encoder_ckpt)
    encoder.to(device)
    size = encoder.encoder.img_size if hasattr(encoder, "encoder") else encoder.img_size
    # (N, 3, H, W); labels unused
    pool_only = not (Path(data_dir) / "train").is_dir()  # a flat import: the pool is all there is
    use_pool = cfg.include_unlabeled or pool_only
    images = load_pretraining_images(data_dir) if use_pool else load_split(data_dir, "train")[0]
    if cfg.max_images:
        images = images[: cfg.max_images]
    images = resize_to(images, size)  # (N, 3, S, S)
    n = images.shape[0]
    if n < 2:
        raise DataError(f"{data_dir}: the generator needs at least 2 training images, found {n}")
    k = min(cfg.k, n)
    enc_version = digest_module(encoder)
    bank, knn = neighbourhoods(
        encoder,
        images,
        k,
        cache_dir=out / "cache",
        data_version=digest_tensor(images),
        encoder_version=enc_version,
    )
    h_dim = bank.shape[1]
    state = build_state(
        h_dim,
        size,
        z_dim=cfg.z_dim,
        g_ch=cfg.g_ch,
        d_ch=cfg.d_ch,
        cond_dim=cfg.cond_dim,
        lr_g=cfg.lr_g,
        lr_d=cfg.lr_d,
        betas=(cfg.beta1, cfg.beta2),
        ema_decay=cfg.ema_decay,
        seed=cfg.seed,
        device=device,
    )
    bundle = ICGAN.from_parts(state.ema.model, encoder, enc_arch, enc_config, bank)
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists():
        hint = f"delete {ckpt_path} (or choose another --out) to start afresh"
        prev = checkpoint.load(ckpt_path, arch=ARCH)
        if prev["extra"].get("encoder_version") != enc_version:
            raise CheckpointError(f"cannot resume: {ckpt_path} was trained on another encoder; {hint}")
        if prev["config"] != bundle.config():
            raise CheckpointError(
                f"cannot resume: {ckpt_path} has model config {prev['config']}, "
                f"this run {bundle.config()}; {hint}"
            )
        state.load(prev["extra"]["train"])
        from tessera.training.resume import resumed_from

        print(f"generator: {resumed_from(prev, ckpt_path, cfg.epochs)}", flush=True)
    # Fixed evaluation material: real images, the grid's instances and noise, the FD/KID scorer.
    g_eval = torch.Generator().manual_seed(cfg.seed + 1)
    real_eval = images[torch.randperm(n, generator=g_eval)[: cfg.eval_samples]]
    grid_idx = torch.randperm(n, generator=g_eval)[: cfg.grid_rows]
    grid_z = torch.randn(grid_idx.numel() * cfg.grid_cols, cfg.z_dim, generator=g_eval)
    scorer = EncoderSpaceScore(encoder, real_eval, cfg.kid_subset_size, cfg.kid_subsets, cfg.seed)
    images_dev, bank_dev = images.to(device), bank.to(device)

    def evaluate(epoch: int) -> dict[str, float]:
        fakes, _ = draw(state.ema.model, bank, cfg.eval_samples, seed=cfg.seed + 2)
        scores = scorer.score(fakes)
        h = bank[grid_idx].repeat_interleave(cfg.grid_cols, dim=0)  # (R*C, D)
        samples = generate(state.ema.model, grid_z, h).view(grid_idx.numel(), cfg.grid_cols, 3, size, size)
        picture = instance_grid(images[grid_idx], samples, grids / f"samples_epoch{epoch:03d}.png")
        tracker.log_artifact(picture)
        instance_grid(images[grid_idx], samples, grids / "samples.png")
        return scores

    if not state.history:  # fresh start: the untrained generator's distance, for reference
        state.history.append({"epoch": 0.0, **evaluate(0)})
    steps = cfg.steps_per_epoch or max(1, n // cfg.batch_size)
    while state.epoch < cfg.epochs:
        losses = train_epoch(
            state,
            images_dev,
            bank_dev,
            knn,
            steps=steps,
            batch_size=cfg.batch_size,
            d_steps=cfg.d_steps,
            progress=cfg.progress,
        )
        bundle.generator.load_state_dict(state.ema.model.state_dict())
        record = {"epoch": float(state.epoch), **losses, **evaluate(state.epoch)}
        state.history.append(record)
        checkpoint.save(
            checkpoint.make(
                ARCH,
                bundle.config(),
                bundle.state_dict(),
                epoch=state.epoch,
                step=state.step,
                data_version=version,
                extra={
                    "train": state.to_dict(),
                    "settings": to_dict(cfg),
                    "encoder_version": enc_version,
                    "encoder_checkpoint": str(encoder_ckpt),
                    "train_images": n,
                    "k": k,
                },
            ),
            ckpt_path,
        )
        tracker.log_metrics({key: v for key, v in record.items() if key != "epoch"}, step=state.epoch)
    last, first = state.history[-1], state.history[0]
    metrics = {
        "fd": last["fd"],
        "kid": last["kid"],
        "kid_std": last["kid_std"],
        "n_real": last["n_real"],
        "n_fake": last["n_fake"],
        "fd_initial": first["fd"],
        "kid_initial": first["kid"],
        "epochs": float(state.epoch),
        "steps": float(state.step),
        "train_images": float(n),
        "k": float(k),
        "d_loss": last.get("d_loss", float("nan")),
        "g_loss": last.get("g_loss", float("nan")),
        "seconds": time.time() - t0,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    tracker.log_artifact(grids / "samples.png")
    return metrics


def _run_from_params(
    params: Path,
    preset: str | None,
    data: Path,
    encoder: Path,
    out: Path,
    data_version: str | None,
    progress: bool = True,
) -> dict[str, float]:
    import dataclasses

    from tessera.config import load_params, section_of
    from tessera.tracking import JsonTracker

    cfg = section_of(Config, load_params(params, preset), SECTION)
    if not progress:
        cfg = dataclasses.replace(cfg, progress=False)
    tracker = JsonTracker(Path(out) / "tracker.jsonl")
    return run(cfg, data, encoder, out, tracker=tracker, data_version=data_version)


def main(argv: list[str] | None = None) -> None:
    """``python -m components.train_generator --params P [--preset cpu] --data D --encoder C --out O``."""
    run_command(cli, argv, "python -m components.train_generator")


def cli(
    data: Path = typer.Option(..., help="Data set root, e.g. data/digits."),
    encoder: Path = typer.Option(..., help="Encoder checkpoint (encoder.pt from `tessera pretrain`)."),
    out: Path = typer.Option(Path("runs/generator"), help="Output folder (rerun to resume)."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file (section `generator`)."),
    preset: str | None = typer.Option(None, help="demo, cpu or gpu."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    data_version: str | None = typer.Option(None, "--data-version", help=DATA_VERSION_HELP),
) -> None:
    """Train the instance-conditioned GAN on a frozen encoder; writes generator.pt, metrics, grids."""
    from tessera.errors import TesseraError

    try:
        metrics = _run_from_params(params, preset, data, encoder, out, data_version, progress=progress)
    except TesseraError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    typer.echo(
        f"fd {metrics['fd']:.4f} (untrained {metrics['fd_initial']:.4f}), kid {metrics['kid']:.5f} "
        f"[n_real {int(metrics['n_real'])}, n_fake {int(metrics['n_fake'])}] -> {out / CHECKPOINT}"
    )


if __name__ == "__main__":
    main()
