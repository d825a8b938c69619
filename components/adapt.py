"""Adaptation step: linear probe (+ rotation head), kNN and fine-tuning on a pretrained encoder.

``python -m components.adapt --params params.yaml [--preset cpu] --data DIR --encoder CKPT --out DIR``
(and ``tessera adapt`` with the same options) reads the ``adapt`` section and writes
``OUT/classifier.pt`` (arch ``ttt_mae_classifier``: the MAE, unchanged, + the linear-probe head of He
et al. 2022 + the rotation head of Sun et al. 2020, the class names, and the TTT-MAE defaults of
Gandelsman et al. 2022 in ``extra["ttt"]``), ``OUT/knn.pt`` and ``OUT/finetuned.pt`` when those
methods are asked for, and ``OUT/metrics.json`` (val/test accuracy of each method).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import typer

from components.command import DATA_VERSION_HELP, data_folder, parse_data_version, run_command
from tessera.config import load_params, section_of, to_dict
from tessera.errors import ConfigError, TesseraError
from tessera.names import ADAPT_METHODS, TTT_DEFAULTS
from tessera.tracking import JsonTracker, NullTracker, Tracker

METHODS = ADAPT_METHODS
CLASSIFIERS = ("linear", "finetune", "joint", "vit_probe")  # = tessera.adapt.recipes.RECIPES
CHECKPOINT = "classifier.pt"


@dataclasses.dataclass(frozen=True)
class Config:
    """The ``adapt`` section of ``params.yaml``."""

    # the registered classifier (classifier.pt): linear | finetune | joint | vit_probe
    classifier: str = "linear"
    methods: tuple[str, ...] = ("linear", "knn")  # of linear, knn, finetune (linear always runs)
    epochs: int = 50  # linear-probe epochs (on cached embeddings, so cheap)
    lr: float = 1.0e-2  # linear-probe AdamW learning rate
    weight_decay: float = 0.0  # linear-probe AdamW weight decay
    batch_size: int = 256  # linear-probe batch size (embeddings)
    rotation_head: bool = True  # train a rotation-prediction head jointly (needed by rotation TTT)
    rotation_weight: float = 1.0  # weight of the rotation loss in the joint loss
    knn_k: int = 20  # kNN: neighbours
    knn_temperature: float = 0.07  # kNN: votes weighted by exp(cosine / T)
    finetune_epochs: int = 5  # fine-tuning epochs (encoder + heads)
    finetune_lr: float = 1.0e-4  # fine-tuning AdamW learning rate
    finetune_batch_size: int = 64  # fine-tuning batch size (images)
    ttt_steps: int = TTT_DEFAULTS["steps"]  # TTT-MAE default SGD steps per input (stored in classifier.pt)
    ttt_copies: int = TTT_DEFAULTS["copies"]  # TTT-MAE default masked copies per step
    ttt_lr: float = TTT_DEFAULTS["lr"]  # TTT-MAE default SGD learning rate (momentum 0.9)
    ttt_mask_ratio: float = TTT_DEFAULTS["mask_ratio"]  # TTT-MAE default mask ratio
    recipe_epochs: int = 10  # finetune / joint / vit_probe classifier: epochs
    recipe_lr: float = 1.0e-3  # its AdamW peak learning rate (linear warm-up, cosine decay)
    recipe_weight_decay: float = 0.05  # its AdamW weight decay (the TTT-MAE reference probe: 0.2)
    recipe_batch_size: int = 64  # its images per step
    recipe_warmup_epochs: float = 1.0  # its warm-up
    label_smoothing: float = 0.1  # its cross-entropy label smoothing
    ssl_weight: float = 1.0  # joint: weight of the self-supervised losses (MAE + rotation)
    crop_scale: float = 0.35  # its random-resized crop: smallest area kept (1: no crop)
    rotation_share: float = 1.0  # finetune / joint: fraction of each batch in the rotation loss
    flip: bool = True  # its horizontal flips (false for digits: a mirrored digit is another one)
    vit_probe_depth: int = 2  # vit_probe: transformer blocks of the head
    max_train: int = 0  # train on a seeded stratified subset of this many images (0: all)
    seed: int = 0  # seeds heads, shuffling and subsets


def validate(cfg: Config) -> None:
    """Refuse settings that cannot run, naming the key."""
    unknown = sorted(set(cfg.methods) - set(METHODS))
    if unknown:
        raise ConfigError(f"adapt.methods: unknown {unknown}; known: {list(METHODS)}")
    if cfg.classifier not in CLASSIFIERS:
        raise ConfigError(f"adapt.classifier: {cfg.classifier!r} is not one of {list(CLASSIFIERS)}")
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise ConfigError("adapt.epochs must be >= 1 and adapt.batch_size >= 2")
    if cfg.knn_k < 1:
        raise ConfigError(f"adapt.knn_k must be >= 1, got {cfg.knn_k}")


def ttt_defaults(cfg: Config) -> dict[str, Any]:
    """The TTT-MAE defaults stored in ``extra["ttt"]`` (serving and evaluate start from these)."""
    return {
        "steps": cfg.ttt_steps,
        "copies": cfg.ttt_copies,
        "lr": cfg.ttt_lr,
        "mask_ratio": cfg.ttt_mask_ratio,
        "momentum": TTT_DEFAULTS["momentum"],
    }


def _load_split(data_dir: Path, split: str, classes: list[str] | None, img_size: int, max_n: int, seed: int):
    from tessera.adapt.evalset import fit_size, load_subset
    from tessera.data.folder import list_classes

    if not (data_dir / split).is_dir():
        return None
    classes = classes if classes is not None else list_classes(data_dir / split)
    images, labels = load_subset(data_dir / split, classes, max_n, seed)
    return fit_size(images, img_size), labels, classes


def run(
    cfg: Config,
    data_dir: str | Path,
    encoder: str | Path,
    out_dir: str | Path,
    tracker: Tracker | None = None,
    *,
    data_version: str | dict[str, Any] | None,
) -> dict[str, float]:
    """Train the heads on the encoder ``encoder`` and the data ``data_dir``; write ``out_dir``.

    ``data_version`` (required) is the version of ``data_dir`` (the classifier's own training data,
    not the encoder's), stamped in the checkpoints.
    """
    import torch

    from tessera import checkpoint
    from tessera.adapt import knn
    from tessera.adapt.heads import ARCH, TTTClassifier
    from tessera.adapt.metrics import accuracy
    from tessera.adapt.probe import TrainSettings, finetune, predict, train_linear_probe
    from tessera.adapt.rotation import rotate_batch
    from tessera.errors import DataError
    from tessera.models.embed import encoder_of
    from tessera.models.registry import from_checkpoint

    validate(cfg)
    version = parse_data_version(data_version, "adapt")
    tracker = tracker or NullTracker()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    enc_ckpt = checkpoint.load(encoder)
    backbone = from_checkpoint(enc_ckpt)
    config = {
        "backbone_arch": enc_ckpt["arch"],
        "backbone_config": dict(enc_ckpt["config"]),
        "rotation_head": cfg.rotation_head,
    }
    torch.manual_seed(cfg.seed)
    img_size = int(encoder_of(backbone).img_size)
    train = _load_split(data_dir, "train", None, img_size, cfg.max_train, cfg.seed)
    if train is None:
        pool = " (it holds only an unlabelled pool)" if (data_dir / "unlabeled").is_dir() else ""
        raise DataError(
            f"{data_dir}/train not found{pool}: the classifier needs labelled class folders"
            " (`tessera data build`, or `tessera data import` of class folders); pretraining and the"
            " generator run without labels"
        )
    x_train, y_train, classes = train
    config["num_classes"] = len(classes)
    model = TTTClassifier(**config)
    model.backbone.load_state_dict(backbone.state_dict())
    evals = {s: _load_split(data_dir, s, classes, img_size, 0, cfg.seed) for s in ("val", "test")}
    if all(ev is None or len(ev[1]) == 0 for ev in evals.values()):  # no metric could come out
        raise DataError(
            f"{data_dir} has no val or test images, so no classifier could be scored: import class"
            " folders large enough for every split (`tessera data import --purpose classify`)"
        )
    metrics: dict[str, float] = {"classes": float(len(classes)), "train_images": float(len(x_train))}

    def score(prefix: str, fn: Any) -> None:
        for split, ev in evals.items():
            if ev is not None:
                metrics[f"{prefix}/{split}_accuracy"] = accuracy(fn(ev[0]), ev[1])

    probe = TrainSettings(cfg.epochs, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.rotation_weight, cfg.seed)
    train_linear_probe(
        model,
        x_train,
        y_train,
        probe,
        on_epoch=lambda e, m: tracker.log_metrics({f"adapt/{k}": v for k, v in m.items()}, e),
    )
    score("linear", lambda x: predict(model, x).argmax(1))
    if model.rot_head is not None:

        def rot_pred(x: torch.Tensor) -> torch.Tensor:
            xr, yr = rotate_batch(x[:256])
            with torch.no_grad():
                return (model.rotation_logits(xr).argmax(1) == yr).float()

        for split, ev in evals.items():
            if ev is not None:
                metrics[f"rotation/{split}_accuracy"] = float(rot_pred(ev[0]).mean())
    extra = {
        "ttt": ttt_defaults(cfg),
        "adapt": to_dict(cfg),
        "encoder": str(encoder),
        "encoder_arch": enc_ckpt["arch"],
        "method": "linear",
    }
    served, served_config = model, config
    if cfg.classifier != "linear":
        checkpoint.save(
            checkpoint.make(
                ARCH, config, model.state_dict(), data_version=version, classes=classes, extra=extra
            ),
            out_dir / "linear.pt",
        )
        served, served_config = _recipe(cfg, model, config, x_train, y_train, tracker)
        score(cfg.classifier, lambda x: predict(served, x).argmax(1))
    recipe = {
        "name": cfg.classifier,
        **({} if cfg.classifier == "linear" else _recipe_settings(cfg).__dict__),
    }
    checkpoint.save(
        checkpoint.make(
            ARCH,
            served_config,
            served.state_dict(),
            data_version=version,
            classes=classes,
            extra={**extra, "method": cfg.classifier, "recipe": recipe, "metrics": dict(metrics)},
        ),
        out_dir / CHECKPOINT,
    )
    if "knn" in cfg.methods:
        bank = knn.knn_bank(model, x_train, y_train, classes, cfg.knn_k, cfg.knn_temperature)
        score("knn", lambda x: knn.knn_predict(model, bank, x))
        torch.save(bank, out_dir / "knn.pt")
    if "finetune" in cfg.methods:
        ft = TrainSettings(
            cfg.finetune_epochs,
            cfg.finetune_lr,
            cfg.weight_decay,
            cfg.finetune_batch_size,
            cfg.rotation_weight,
            cfg.seed,
        )
        finetune(
            model,
            x_train,
            y_train,
            ft,
            on_epoch=lambda e, m: tracker.log_metrics({f"adapt/{k}": v for k, v in m.items()}, e),
        )
        score("finetune", lambda x: predict(model, x).argmax(1))
        checkpoint.save(
            checkpoint.make(
                ARCH,
                config,
                model.state_dict(),
                data_version=version,
                classes=classes,
                extra={**extra, "method": "finetune"},
            ),
            out_dir / "finetuned.pt",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    tracker.log_metrics(metrics, step=cfg.epochs)
    return metrics


def _recipe_settings(cfg: Config) -> Any:
    from tessera.adapt.recipes import RecipeSettings

    return RecipeSettings(
        epochs=cfg.recipe_epochs,
        lr=cfg.recipe_lr,
        weight_decay=cfg.recipe_weight_decay,
        batch_size=cfg.recipe_batch_size,
        warmup_epochs=cfg.recipe_warmup_epochs,
        label_smoothing=cfg.label_smoothing,
        ssl_weight=cfg.ssl_weight,
        crop_scale=cfg.crop_scale,
        rotation_share=cfg.rotation_share,
        flip=cfg.flip,
        seed=cfg.seed,
    )


def _recipe(
    cfg: Config, probed: Any, config: dict[str, Any], images: Any, labels: Any, tracker: Tracker
) -> tuple[Any, dict[str, Any]]:
    """The classifier of ``cfg.classifier``: fine-tuned or jointly trained from the linear-probed one
    (its head a warm start), or a ViT probe on the frozen encoder."""
    import copy

    from tessera.adapt.heads import TTTClassifier
    from tessera.adapt.recipes import train_recipe

    if cfg.classifier == "vit_probe":
        config = {**config, "head": "vit", "head_depth": cfg.vit_probe_depth}
        model = TTTClassifier(**config)
        model.backbone.load_state_dict(probed.backbone.state_dict())
    else:
        model = copy.deepcopy(probed)
    hook = lambda e, m: tracker.log_metrics({f"adapt/{k}": v for k, v in m.items()}, e)  # noqa: E731
    train_recipe(model, images, labels, cfg.classifier, _recipe_settings(cfg), on_epoch=hook)
    return model, config


def execute(
    params: str, preset: str | None, data: str | None, encoder: str, out: str, data_version: str | None
) -> dict[str, float]:
    """Shared by ``main`` and ``cli``: read params, pick the data folder, run with a JSON-lines tracker."""
    all_params = load_params(params, preset)
    cfg = section_of(Config, all_params, "adapt")
    data = data or str(data_folder(all_params))
    tracker = JsonTracker(Path(out) / "tracker.jsonl")
    metrics = run(cfg, data, encoder, out, tracker, data_version=data_version)
    print(json.dumps(metrics))
    return metrics


def main(argv: list[str] | None = None) -> None:
    """``python -m components.adapt --params P [--preset cpu] --data DIR --encoder CKPT --out DIR``."""
    run_command(cli, argv, "python -m components.adapt")


def cli(
    params: str = typer.Option("params.yaml", "--params", help="params file (section `adapt`)"),
    preset: str | None = typer.Option(None, "--preset", help="overlay params.<preset>.yaml (cpu, gpu)"),
    data: str | None = typer.Option(None, "--data", help="image folder (default: data/<data.name>)"),
    encoder: str = typer.Option("runs/pretrain/encoder.pt", "--encoder", help="encoder checkpoint"),
    out: str = typer.Option("runs/adapt", "--out", help="output folder"),
    data_version: str | None = typer.Option(None, "--data-version", help=DATA_VERSION_HELP),
) -> None:
    """Linear probe (+ rotation head), kNN, fine-tuning: write OUT/classifier.pt and metrics.json."""
    try:
        execute(params, preset, data, encoder, out, data_version)
    except TesseraError as e:
        typer.echo(f"adapt: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(2) from e


if __name__ == "__main__":
    main()
