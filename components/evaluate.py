"""Evaluation step: accuracy of the classifier and its test-time adaptations, clean and corrupted.

``python -m components.evaluate --params params.yaml [--preset cpu] --data DIR --corrupted DIR
--classifier CKPT --out DIR`` (and ``tessera evaluate``) reads the ``evaluate`` section and scores
each method (frozen, normstat, TENT, rotation TTT and TTT-MAE, episodic and online) on the clean test
split and on every corruption x severity cell of the corrupted set (Hendrycks and Dietterich 2019),
on a seeded stratified subset of ``per_cell`` images per cell. It writes ``OUT/metrics.json`` (keys in
docs/CONTRACTS.md: ``clean/accuracy``, ``clean/<method>/accuracy``, ``corrupted/<method>/mean_accuracy``,
``corrupted/<method>/<corruption>/<severity>``, with ``/n`` and ``/ci95``), ``OUT/heatmap.png``,
``OUT/bars.png`` and the tables ``OUT/plots/{cells,per_severity,per_corruption}.csv`` for ``dvc plots``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import typer

from components.command import data_folder, run_command
from tessera.config import load_params, section_of
from tessera.errors import TesseraError
from tessera.names import EVAL_METHODS, ttt_defaults
from tessera.tracking import JsonTracker, NullTracker, Tracker

ALL_METHODS = EVAL_METHODS
CHECKPOINT = "classifier.pt"  # the evaluated classifier with its adaptation policy (the one registered)
POLICY_FILE = "adaptation_policy.json"
# metrics.json names the weights it measured: registering an evaluation made outside the flow checks
# it against the classifier registered with it (lifecycle/verify.py)
DIGEST_KEY = "evaluated/weights_sha256"


@dataclasses.dataclass(frozen=True)
class Config:
    """The ``evaluate`` section of ``params.yaml``."""

    methods: tuple[str, ...] = ALL_METHODS  # which methods to score (names as in the metric keys)
    per_cell: int = 20  # images per corruption x severity cell, seeded and stratified (0: all)
    clean_subset: int = 100  # clean test images for every method (0: all); clean/accuracy uses all
    corruptions: tuple[str, ...] = ()  # corruptions to score (empty: every one in the corrupted set)
    severities: tuple[int, ...] = ()  # severities to score (empty: every one found)
    ttt_steps: int | None = None  # TTT-MAE steps per input (None: the classifier's extra["ttt"])
    ttt_copies: int | None = None  # TTT-MAE masked copies per step (None: the classifier's)
    ttt_lr: float | None = None  # TTT-MAE SGD learning rate (None: the classifier's)
    ttt_mask_ratio: float | None = None  # TTT-MAE mask ratio (None: the classifier's)
    ttt_adapt: str = "encoder"  # TTT-MAE parameters: encoder | reference (+ mask token) | norm (LayerNorms)
    ttt_scale_lr: bool = False  # TTT-MAE: ttt_lr is the reference's base lr, used x copies / 256
    online_reset_every: int = 0  # online TTT: restore the weights every N inputs (0: never in a cell)
    batched: bool = True  # episodic TTT-MAE with the batched (stacked-weights) implementation
    batch_size: int = 32  # inputs per batched TTT call
    rotation_steps: int = 1  # rotation TTT: SGD steps per input (Sun et al.: 1 online, 10 episodic)
    rotation_lr: float = 1.0e-3  # rotation TTT: SGD learning rate (momentum 0.9)
    tent_lr: float = 1.0e-3  # TENT: SGD learning rate (momentum 0.9)
    tent_steps: int = 1  # TENT: updates per test batch
    tent_batch_size: int = 64  # TENT: test images per batch
    normstat_prior: float = 16.0  # norm-stat: weight N of the training statistics (0: test batch only)
    request_images: int = 16  # normstat, tent_episodic: images per request (they adapt to one at a time)
    seed: int = 0  # seeds the subsets, the TTT masks and the bootstrap
    policy_max_seconds_per_image: float = 5.0  # latency budget of the policy (adaptation s/image here)
    bootstrap: int = 2000  # resamples of the paired gain interval (by source image)
    progress: bool = True  # show a progress bar


def method_settings(cfg: Config, ttt: dict[str, Any]) -> Any:
    """The :class:`MethodSettings` of ``cfg`` over the classifier's TTT defaults ``ttt``."""
    from tessera.adapt.evaluation import MethodSettings
    from tessera.adapt.tent import TentSettings
    from tessera.adapt.test_time import TTTSettings

    stored = ttt_defaults(ttt)

    def pick(value: Any, key: str) -> Any:
        return value if value is not None else stored[key]

    mae = TTTSettings(
        steps=int(pick(cfg.ttt_steps, "steps")),
        copies=int(pick(cfg.ttt_copies, "copies")),
        lr=float(pick(cfg.ttt_lr, "lr")),
        momentum=float(stored["momentum"]),
        mask_ratio=float(pick(cfg.ttt_mask_ratio, "mask_ratio")),
        adapt=cfg.ttt_adapt,
        scale_lr=cfg.ttt_scale_lr,
        reset_every=cfg.online_reset_every,
        seed=cfg.seed,
    )
    rot = TTTSettings(
        steps=cfg.rotation_steps, lr=cfg.rotation_lr, reset_every=cfg.online_reset_every, seed=cfg.seed
    )
    return MethodSettings(
        ttt=mae,
        rotation=rot,
        tent=TentSettings(cfg.tent_lr, 0.9, cfg.tent_steps, cfg.tent_batch_size),
        normstat_prior=cfg.normstat_prior,
        request_images=cfg.request_images,
        batched=cfg.batched,
        batch_size=cfg.batch_size,
    )


def load_classifier(path: str | Path, data_dir: Path) -> tuple[Any, dict[str, Any], list[str]]:
    """The TTT classifier at ``path``, checked against the classes of ``data_dir/test``."""
    import tessera.adapt.heads  # noqa: F401  (registers ttt_mae_classifier)
    from tessera import checkpoint
    from tessera.adapt.heads import ARCH
    from tessera.data.folder import list_classes
    from tessera.errors import DataError, ModelError
    from tessera.models.registry import from_checkpoint

    ckpt = checkpoint.load(path, arch=ARCH)
    classes = list(ckpt.get("classes") or [])
    k = int(ckpt["config"].get("num_classes", 0))
    redo = f"re-run `tessera adapt --data {data_dir} --encoder <encoder.pt>` to make a matching classifier"
    if k != len(classes):
        raise ModelError(f"classifier {path} has a head of {k} classes but names {len(classes)}: {redo}")
    test_dir = data_dir / "test"
    if not test_dir.is_dir():
        raise DataError(f"{test_dir} not found: build the data first (`tessera data build`)")
    found = list_classes(test_dir)
    if sorted(found) != sorted(classes):
        raise ModelError(
            f"classifier {path} predicts {k} classes {classes}, but {test_dir} has {len(found)}"
            f" classes {found}: {redo}"
        )
    return from_checkpoint(ckpt).eval(), ckpt, classes


def run(
    cfg: Config,
    data_dir: str | Path,
    corrupted_dir: str | Path,
    classifier: str | Path,
    out_dir: str | Path,
    tracker: Tracker | None = None,
) -> dict[str, float]:
    """Score every method of ``cfg`` clean and corrupted; write metrics, pictures and tables."""
    import torch
    from tqdm import tqdm

    from tessera import checkpoint
    from tessera.adapt.evalset import corrupted_cells, fit_size, load_subset, load_subset_with_ids
    from tessera.adapt.evaluation import check_methods, run_method
    from tessera.adapt.metrics import summarize
    from tessera.adapt.probe import predict
    from tessera.adapt.stats import Outcomes

    tracker = tracker or NullTracker()
    data_dir, corrupted_dir, out_dir = Path(data_dir), Path(corrupted_dir), Path(out_dir)
    torch.manual_seed(cfg.seed)
    model, ckpt, classes = load_classifier(classifier, data_dir)
    methods = cfg.methods if "frozen" in cfg.methods else ("frozen", *cfg.methods)  # gains need it
    check_methods(model, methods)
    cells = corrupted_cells(corrupted_dir, cfg.corruptions, cfg.severities)
    stored_ttt = dict(ckpt.get("extra", {}).get("ttt", {}))
    settings = method_settings(cfg, stored_ttt)
    size = model.encoder.img_size
    metrics: dict[str, float] = {}
    x_all, y_all = load_subset(data_dir / "test", classes, 0, cfg.seed)
    _put(metrics, "clean", summarize(predict(model, fit_size(x_all, size)).argmax(1), y_all))
    x_clean, y_clean = load_subset(data_dir / "test", classes, cfg.clean_subset, cfg.seed)
    x_clean = fit_size(x_clean, size)
    seconds = dict.fromkeys(methods, 0.0)
    images = dict.fromkeys(methods, 0)
    acc: dict[str, dict[str, dict[str, float]]] = {m: {} for m in methods}
    totals = {m: [0, 0] for m in methods}  # correct, n
    items = Outcomes(methods)  # every scored corrupted item: its source image and who got it right
    bar = tqdm(total=len(methods) * (len(cells) + 1), desc="evaluate", disable=not cfg.progress)
    for m in methods:
        t0 = time.perf_counter()
        _put(metrics, f"clean/{m}", summarize(run_method(m, model, x_clean, settings).argmax(1), y_clean))
        seconds[m] += time.perf_counter() - t0
        images[m] += len(x_clean)
        bar.update(1)
    for cell in cells:
        cell_dir = corrupted_dir / cell.corruption / cell.severity
        x, y, ids = load_subset_with_ids(cell_dir, classes, cfg.per_cell, cfg.seed)
        x = fit_size(x, size)
        items.add_cell(cell.corruption, ids)
        for m in methods:
            bar.set_postfix_str(f"{cell.corruption}/{cell.severity} {m}")
            t0 = time.perf_counter()
            pred = run_method(m, model, x, settings).argmax(1)
            seconds[m] += time.perf_counter() - t0
            items.add(m, pred.cpu() == y)
            s = summarize(pred, y)
            images[m] += len(x)
            _put(metrics, f"corrupted/{m}/{cell.corruption}/{cell.severity}", s, leaf=True)
            acc[m].setdefault(cell.corruption, {})[cell.severity] = s["accuracy"]
            totals[m][0] += round(s["accuracy"] * s["n"])
            totals[m][1] += int(s["n"])
            bar.update(1)
    bar.close()
    _summaries(metrics, acc, totals, seconds, images)
    gains = _gains(metrics, items, cfg)
    policy = _policy(metrics, gains, settings, cfg, stored_ttt)
    _write_outputs(out_dir, metrics, acc, cells, tracker, checkpoint.weights_digest(ckpt))
    _write_policy(out_dir, policy, gains, tracker)
    extra = {**dict(ckpt.get("extra") or {}), "policy": policy}  # registered, served: serving reads it
    checkpoint.save({**ckpt, "extra": extra}, out_dir / CHECKPOINT)
    return metrics


def _split_corruptions(evaluated: list[str]) -> tuple[list[str], list[str]]:
    """(reported, selection): the 15 standard ones are reported, the 4 extra ones (when evaluated)
    choose the policy, so the reported figures play no part in the choice (CIFAR-10-C convention)."""
    from tessera.names import EXTRA_CORRUPTIONS

    selection = [c for c in evaluated if c in EXTRA_CORRUPTIONS]
    reported = [c for c in evaluated if c not in EXTRA_CORRUPTIONS] or evaluated
    return reported, selection or reported


def _gains(metrics: dict[str, float], items: Any, cfg: Config) -> dict[str, Any]:
    """Paired gains over frozen by source image: on the reported corruptions (mean and each one) and
    on the selection ones; also written to ``metrics`` (``gain/<method>/...``)."""
    evaluated = sorted(set(items.corruptions))
    reported, selection = _split_corruptions(evaluated)
    out: dict[str, dict[str, Any]] = {}
    for m in items.methods:
        if m == "frozen":
            continue
        mean = items.gain(m, reported, n_boot=cfg.bootstrap, seed=cfg.seed)
        chosen_on = items.gain(m, selection, n_boot=cfg.bootstrap, seed=cfg.seed)
        per = {c: items.gain(m, [c], n_boot=cfg.bootstrap, seed=cfg.seed) for c in evaluated}
        out[m] = {"reported": mean, "selection": chosen_on, "per_corruption": per}
        metrics[f"gain/{m}/mean"] = mean.gain
        metrics[f"gain/{m}/ci_low"] = mean.low
        metrics[f"gain/{m}/ci_high"] = mean.high
        metrics[f"gain/{m}/images"] = float(mean.images)
        metrics[f"gain/{m}/selection"] = chosen_on.gain
        metrics[f"gain/{m}/selection_ci_low"] = chosen_on.low
        for c, g in per.items():
            metrics[f"gain/{m}/{c}/mean"] = g.gain
    return {"methods": out, "reported": reported, "selection": selection}


def _policy(
    metrics: dict[str, float], gains: dict[str, Any], settings: Any, cfg: Config, stored: dict[str, Any]
) -> dict[str, Any]:
    """The release's adaptation policy (:func:`tessera.adapt.policy.choose`) and its metrics.

    TTT-MAE is a candidate only as the endpoint runs it: the encoder adapted (batched) with the
    classifier's own learning rate and mask ratio (the endpoint takes steps and copies per request)."""
    from tessera.adapt.policy import NONE, SERVABLE, Candidate, choose
    from tessera.names import ttt_defaults

    budgets = {
        "ttt_mae_episodic": {"steps": settings.ttt.steps, "copies": settings.ttt.copies},
        "normstat": {"prior": settings.normstat_prior, "request_images": settings.request_images},
        "tent_episodic": {
            "tent_steps": settings.tent.steps,
            "tent_lr": settings.tent.lr,
            "request_images": settings.request_images,
        },
    }
    served = ttt_defaults(stored)
    as_served = (
        settings.ttt.adapt == "encoder"
        and abs(settings.ttt.effective_lr - float(served["lr"])) < 1e-12
        and abs(settings.ttt.mask_ratio - float(served["mask_ratio"])) < 1e-12
    )
    candidates = [
        Candidate(
            m,
            budgets.get(m, {}),
            g["selection"].gain,
            g["selection"].low,
            g["selection"].high,
            metrics[f"cost/{m}/seconds_per_image"],
            g["selection"].images,
            servable=m in SERVABLE and (m != "ttt_mae_episodic" or as_served),
        )
        for m, g in gains["methods"].items()
    ]
    reported = {m: g["reported"].as_dict() for m, g in gains["methods"].items()}
    policy = choose(
        candidates,
        max_seconds_per_image=cfg.policy_max_seconds_per_image,
        selected_on=gains["selection"],
        reported=reported,
    )
    applied = "frozen" if policy["method"] == NONE else policy["method"]
    metrics["corrupted/policy/mean_accuracy"] = metrics[f"corrupted/{applied}/mean_accuracy"]
    metrics["clean/policy/accuracy"] = metrics[f"clean/{applied}/accuracy"]
    metrics["policy/gain"] = 0.0 if applied == "frozen" else reported[applied]["gain"]
    metrics["policy/ci_low"] = 0.0 if applied == "frozen" else reported[applied]["low"]
    return policy


def _write_policy(out_dir: Path, policy: dict[str, Any], gains: dict[str, Any], tracker: Tracker) -> None:
    from tessera.adapt.plots import gain_heatmap

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / POLICY_FILE).write_text(json.dumps(policy, indent=2, sort_keys=True) + "\n")
    per = {m: {c: g.gain for c, g in v["per_corruption"].items()} for m, v in gains["methods"].items()}
    ci = {m: (v["reported"].low, v["reported"].high) for m, v in gains["methods"].items()}
    for path in (out_dir / POLICY_FILE, gain_heatmap(per, out_dir / "gain_heatmap.png", ci)):
        tracker.log_artifact(path)


def _put(metrics: dict[str, float], prefix: str, s: dict[str, float], leaf: bool = False) -> None:
    metrics[prefix if leaf else f"{prefix}/accuracy"] = s["accuracy"]
    metrics[f"{prefix}/n"] = s["n"]
    metrics[f"{prefix}/ci95"] = s["ci95"]


def _summaries(
    metrics: dict[str, float],
    acc: dict[str, dict[str, dict[str, float]]],
    totals: dict[str, list[int]],
    seconds: dict[str, float],
    images: dict[str, int],
) -> None:
    # No Wilson interval on the mean over cells: a source image appears in every cell, so the cells'
    # items are not independent trials (the gains carry a paired interval by image instead).
    for m, per_corr in acc.items():
        reported, _ = _split_corruptions(sorted(per_corr))
        vals = [v for c in reported for v in per_corr[c].values()]
        metrics[f"corrupted/{m}/mean_accuracy"] = sum(vals) / len(vals) if vals else 0.0
        metrics[f"corrupted/{m}/n"] = float(totals[m][1])
        for c, sev in per_corr.items():
            metrics[f"corrupted/{m}/{c}/mean_accuracy"] = sum(sev.values()) / len(sev)
        metrics[f"cost/{m}/seconds_per_image"] = seconds[m] / max(images[m], 1)


def _write_outputs(
    out_dir: Path,
    metrics: dict[str, float],
    acc: dict[str, dict[str, dict[str, float]]],
    cells: list[Any],
    tracker: Tracker,
    digest: str,
) -> None:
    from tessera.adapt.plots import bar_chart, heatmap

    out_dir.mkdir(parents=True, exist_ok=True)
    written = {**metrics, DIGEST_KEY: digest}
    (out_dir / "metrics.json").write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    methods = list(acc)
    with (plots / "cells.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "corruption", "severity", "accuracy", "n", "ci95"])
        for m in methods:
            for cell in cells:
                key = f"corrupted/{m}/{cell.corruption}/{cell.severity}"
                w.writerow(
                    [
                        m,
                        cell.corruption,
                        cell.severity,
                        metrics[key],
                        int(metrics[f"{key}/n"]),
                        metrics[f"{key}/ci95"],
                    ]
                )
    severities = sorted({c.severity for c in cells}, key=lambda s: (len(s), s))
    with (plots / "per_severity.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["severity", *methods])
        for s in severities:
            w.writerow([s, *[_mean([acc[m][c][s] for c in acc[m] if s in acc[m][c]]) for m in methods]])
    with (plots / "per_corruption.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["corruption", *methods])
        for c in sorted({cell.corruption for cell in cells}):
            w.writerow([c, *[_mean(list(acc[m][c].values())) for m in methods]])
    for path in (
        heatmap(acc, out_dir / "heatmap.png"),
        bar_chart(acc, out_dir / "bars.png"),
        plots / "cells.csv",
        plots / "per_severity.csv",
        plots / "per_corruption.csv",
    ):
        tracker.log_artifact(path)
    tracker.log_metrics({k: v for k, v in metrics.items() if k.count("/") <= 2}, step=0)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def execute(
    params: str, preset: str | None, data: str | None, corrupted: str | None, classifier: str, out: str
) -> dict[str, float]:
    """Shared by ``main`` and ``cli``: read params, pick the folders, run with a JSON-lines tracker."""
    all_params = load_params(params, preset)
    cfg = section_of(Config, all_params, "evaluate")
    if data is None or corrupted is None:
        folder = data_folder(all_params)
        data = data or str(folder)
        corrupted = corrupted or f"{folder}-c"
    metrics = run(cfg, data, corrupted, classifier, out, JsonTracker(Path(out) / "tracker.jsonl"))
    print(json.dumps({k: v for k, v in metrics.items() if k.count("/") <= 2}, indent=1))
    return metrics


def main(argv: list[str] | None = None) -> None:
    """``python -m components.evaluate --params P --data DIR --corrupted DIR --classifier CKPT --out DIR``."""
    run_command(cli, argv, "python -m components.evaluate")


def cli(
    params: str = typer.Option("params.yaml", "--params", help="params file (section `evaluate`)"),
    preset: str | None = typer.Option(None, "--preset", help="overlay params.<preset>.yaml (cpu, gpu)"),
    data: str | None = typer.Option(None, "--data", help="clean image folder (default: data/<data.name>)"),
    corrupted: str | None = typer.Option(None, "--corrupted", help="corrupted set (default: data/<name>-c)"),
    classifier: str = typer.Option("runs/adapt/classifier.pt", "--classifier", help="classifier checkpoint"),
    out: str = typer.Option("runs/evaluate", "--out", help="output folder"),
) -> None:
    """Score frozen / norm-stat / TENT / rotation TTT / TTT-MAE, clean and on every corruption cell."""
    try:
        execute(params, preset, data, corrupted, classifier, out)
    except TesseraError as e:
        typer.echo(f"evaluate: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(2) from e


if __name__ == "__main__":
    main()
