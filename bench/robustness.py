"""Robustness table: frozen, norm-stat, TENT, rotation TTT and TTT-MAE under common corruptions.

Bounded end-to-end run of the real steps: a micro/mini MAE pretrained here for ``--pretrain-s``
seconds (no pretrained weights exist offline), ``components.adapt`` (linear probe + rotation head),
the corruption suite of ``tessera.corruptions`` on a subset of the test split, then
``components.evaluate`` over it. Data: the embedded digits (scikit-learn's, rendered to 32 px) or
CIFAR-10 from ``/work/shared/data/cifar10`` (unpacked to /tmp, never into the repo).

    python bench/robustness.py --dataset digits --pretrain-s 120 --per-cell 20
    python bench/robustness.py --dataset cifar10 --pretrain-s 240 --per-cell 20
    python bench/robustness.py --dataset cifar10 --classifier joint --recipe-epochs 5 --corruptions all

``--classifier`` picks the recipe of the classifier (``adapt.classifier``: linear, finetune, joint,
vit_probe). ``--corruptions all`` scores the 15 standard corruptions and the 4 extra ones, which
choose the adaptation policy (reported on the 15). It ends with the gain of every method over frozen
(paired, 95% interval resampled by source image), the chosen policy and the RESULT lines
``robustness_<data>_clean_acc``, ``_headroom`` (clean minus the corrupted mean, frozen),
``_policy_gain`` / ``_policy_gain_ci_low`` and ``_ttt_mae_gain`` / ``_ttt_mae_gain_ci_low`` (the
better of episodic and online).

``--ttt-grid 1x4,5x8,20x16`` adds the budget table: episodic TTT-MAE at each ``steps x copies`` on the
same corrupted images, its accuracy, cost, and the paired difference from the reference budget (the
last entry of the grid) with a 95% interval: where a smaller budget is as accurate, the CPU saves its
compute. ``--rotation-lrs 1e-3,1e-4`` adds rotation TTT (episodic) at those learning rates.
``--reuse`` keeps the encoder, classifier and data of an earlier run in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import math
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from components import adapt as adapt_step
from components import evaluate as eval_step
from tessera import checkpoint
from tessera.adapt.evalset import corrupted_cells, fit_size, load_subset
from tessera.adapt.evaluation import MethodSettings, run_method
from tessera.adapt.metrics import ci95_halfwidth
from tessera.adapt.test_time import TTTSettings
from tessera.corruptions import ALL_CORRUPTIONS, corrupt
from tessera.corruptions import CORRUPTIONS as CORRUPTIONS_15
from tessera.data.folder import load_split
from tessera.models import registry

FIVE = ("gaussian_noise", "defocus_blur", "contrast", "jpeg_compression", "fog")
CORRUPTIONS = FIVE  # the table's columns


def _save(root: Path, images: np.ndarray, labels: list[str]) -> None:
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        (root / y).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / y / f"{i:05d}.png")


def digits(root: Path) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.kron(d.images / 16.0, np.ones((4, 4)))  # (N, 32, 32)
    rgb = (np.stack([x, x, x], -1) * 255).round().astype(np.uint8)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(rgb))
    names = [f"digit_{t}" for t in d.target]
    for split, idx in (("train", perm[:1200]), ("val", perm[1200:1400]), ("test", perm[1400:])):
        _save(root / split, rgb[idx], [names[i] for i in idx])


def cifar10(root: Path, n_train: int = 10000) -> None:
    src = Path("/work/shared/data/cifar10")
    tmp = Path("/tmp/cifar10-jpeg")
    if not (tmp / "test").is_dir():
        for part in ("train", "test"):
            with tarfile.open(src / f"cifar10-{part}-jpeg.tar") as t:
                t.extractall(tmp, filter="data")
    rng = np.random.default_rng(0)
    for split, source, n in (("train", "train", n_train), ("val", "test", 500), ("test", "test", 2000)):
        files = sorted((tmp / source).glob("*/*.jpg"))
        files = [files[i] for i in rng.permutation(len(files))]
        files = files[:n] if split != "test" else files[500 : 500 + n]
        for i, f in enumerate(files):
            (root / split / f.parent.name).mkdir(parents=True, exist_ok=True)
            Image.open(f).convert("RGB").save(root / split / f.parent.name / f"{i:05d}.png")


def corrupt_set(
    data: Path, out: Path, per_class: int, severities: tuple[int, ...], names: tuple[str, ...] = FIVE
) -> None:
    x, y, classes = load_split(data, "test")
    keep = np.concatenate([np.flatnonzero(y.numpy() == c)[:per_class] for c in range(len(classes))])
    imgs = (x[keep].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    labels = [classes[int(y[i])] for i in keep]
    for c in names:
        for s in severities:
            _save(
                out / c / str(s), np.stack([corrupt(im, c, s, seed=i) for i, im in enumerate(imgs)]), labels
            )


def pretrain(images: torch.Tensor, arch: str, seconds: float) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(0)
    mae = registry.build(arch)
    opt = torch.optim.AdamW(mae.parameters(), lr=1.5e-3, weight_decay=0.05)
    t0, step = time.time(), 0
    while time.time() - t0 < seconds:
        idx = torch.randint(0, len(images), (128,))
        x = images[idx]
        x = torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, x, x.flip(-1)) if images.shape[0] > 5000 else x
        loss, _, _ = mae(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
    return mae.eval(), step


def corrupted_images(
    cdata: Path, classes: list[str], per_cell: int, seed: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every cell's subset (the images ``components.evaluate`` scores), concatenated."""
    xs, ys = [], []
    for cell in corrupted_cells(cdata):
        x, y = load_subset(cdata / cell.corruption / cell.severity, classes, per_cell, seed)
        xs.append(fit_size(x, size))
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def _paired(correct: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Mean paired difference of two 0/1 vectors on the same images and its 95% half-width."""
    d = correct.float() - ref.float()
    half = 1.96 * float(d.std()) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return float(d.mean()), half


def budget_grid(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    grid: list[tuple[int, int]],
    lr: float,
    seed: int,
    dataset: str,
) -> None:
    """Episodic TTT-MAE at each (steps, copies) on the same images; the last entry is the reference."""
    correct, cost = {}, {}
    for steps, copies in grid:
        t0 = time.perf_counter()
        ttt = TTTSettings(steps=steps, copies=copies, lr=lr, seed=seed)
        probs = run_method("ttt_mae_episodic", model, x, MethodSettings(ttt=ttt))  # as `tessera evaluate`
        cost[steps, copies] = (time.perf_counter() - t0) / len(x)
        correct[steps, copies] = probs.argmax(1) == y
        print(
            f"  {steps}x{copies}: {float(correct[steps, copies].float().mean()):.3f}"
            f" ({cost[steps, copies]:.3f} s/img)",
            flush=True,
        )
    ref = grid[-1]
    print(f"\nTTT-MAE budget (episodic, lr {lr}), {len(y)} corrupted images; reference {ref[0]}x{ref[1]}:")
    print("| steps x copies | copy-steps | accuracy ± CI95 | vs reference (paired, CI95) | agree | s/img |")
    print("|---|---|---|---|---|---|")
    for key in grid:
        c = correct[key]
        diff, half = _paired(c, correct[ref])
        agree = float((c == correct[ref]).float().mean())
        print(
            f"| {key[0]}x{key[1]} | {key[0] * key[1]} | {float(c.float().mean()):.3f} ±"
            f" {ci95_halfwidth(int(c.sum()), len(c)):.3f} | {diff:+.3f} ± {half:.3f} | {agree:.2f} |"
            f" {cost[key]:.3f} |"
        )
    for key in grid:
        name = f"robustness_{dataset}_ttt_{key[0]}x{key[1]}"
        print(f"RESULT {name}_acc {float(correct[key].float().mean()):.4f} acc")
        print(f"RESULT {name}_cost {cost[key]:.4f} s/img")


def rotation_lrs(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lrs: list[float], dataset: str
) -> None:
    """Episodic rotation TTT (1 step) at each learning rate on the same images."""
    print(f"\nrotation TTT (episodic, 1 step) by learning rate, {len(y)} corrupted images:")
    for lr in lrs:
        rotation = TTTSettings(steps=1, lr=lr)
        probs = run_method("rotation_episodic", model, x, MethodSettings(rotation=rotation))  # type: ignore[arg-type]
        acc = float((probs.argmax(1) == y).float().mean())
        print(f"  lr {lr:g}: {acc:.3f}")
        print(f"RESULT robustness_{dataset}_rotation_lr{lr:g}_acc {acc:.4f} acc")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=("digits", "cifar10"), default="digits")
    p.add_argument("--arch", default="mae_vit_mini_patch4")
    p.add_argument("--pretrain-s", type=float, default=120)
    p.add_argument("--per-cell", type=int, default=20)
    p.add_argument("--severities", default="1,3,5")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--copies", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument(
        "--ttt-grid",
        default="",
        help="steps x copies budgets, e.g. 1x4,5x8,20x16 (the last is the reference)",
    )
    p.add_argument("--rotation-lrs", default="", help="rotation TTT learning rates, e.g. 1e-3,1e-4")
    p.add_argument("--reuse", action="store_true", help="reuse the encoder/classifier of an earlier run")
    p.add_argument("--skip-table", action="store_true", help="only the grid and learning-rate sweeps")
    p.add_argument("--work", default="/tmp/tessera-robustness")
    p.add_argument("--classifier", default="linear", choices=adapt_step.CLASSIFIERS)
    p.add_argument("--recipe-epochs", type=int, default=5)
    p.add_argument("--recipe-lr", type=float, default=1e-3)
    p.add_argument("--crop-scale", type=float, default=0.35, help="adapt.crop_scale of the recipe")
    p.add_argument("--rotation-share", type=float, default=1.0, help="adapt.rotation_share of the recipe")
    p.add_argument("--train-images", type=int, default=10000, help="cifar10: training images (<= 50000)")
    p.add_argument("--train-only", action="store_true", help="stop after training the classifier")
    p.add_argument("--tent-batch", type=int, default=20, help="TENT online: images per batch of the stream")
    p.add_argument("--methods", default="", help="evaluate.methods, comma-separated (default: all)")
    p.add_argument(
        "--stream",
        default="",
        help="CORRUPTION/SEVERITY: also TTT-MAE online vs episodic on that one cell (e.g. gaussian_noise/5)",
    )
    p.add_argument("--corruptions", choices=("five", "all"), default="five", help="all: the 15 + the 4 extra")
    a = p.parse_args()
    sev = tuple(int(s) for s in a.severities.split(","))
    work = Path(a.work) / a.dataset
    data, cdata = work / a.dataset, work / f"{a.dataset}-c"
    if not (data / "test").is_dir():
        digits(data) if a.dataset == "digits" else cifar10(data, a.train_images)
    names = FIVE if a.corruptions == "five" else ALL_CORRUPTIONS
    if not cdata.is_dir():
        corrupt_set(data, cdata, max(1, a.per_cell // 10), sev, names)
    enc, clf = work / "encoder.pt", work / f"adapt-{a.classifier}" / "classifier.pt"
    if not (a.reuse and enc.is_file()):
        x, _, _ = load_split(data, "train")
        mae, steps = pretrain(x, a.arch, a.pretrain_s)
        checkpoint.save(checkpoint.make(a.arch, registry.config_of(a.arch), mae.state_dict()), enc)
        print(f"dataset {a.dataset} arch {a.arch} pretrain {a.pretrain_s:.0f}s ({steps} steps of 128)")
    if not (a.reuse and clf.is_file()):
        recipe = adapt_step.Config(
            classifier=a.classifier,
            methods=("linear", "knn"),
            epochs=60,
            recipe_epochs=a.recipe_epochs,
            recipe_lr=a.recipe_lr,
            crop_scale=a.crop_scale,
            rotation_share=a.rotation_share,
            flip=a.dataset != "digits",  # a mirrored digit is another digit
            ttt_steps=a.steps,
            ttt_copies=a.copies,
            ttt_lr=a.lr,
        )
        version = {"md5": f"bench-{a.dataset}-{a.per_cell}"}  # not a DVC-tracked folder
        t0 = time.time()
        am = adapt_step.run(recipe, data, enc, clf.parent, data_version=version)
        print(
            f"classifier {a.classifier} ({time.time() - t0:.0f} s):"
            f" test {am[f'{a.classifier}/test_accuracy']:.3f}"
            f" (linear probe {am['linear/test_accuracy']:.3f}, kNN {am['knn/test_accuracy']:.3f})",
            flush=True,
        )
    if a.train_only:
        return
    cfg = eval_step.Config(
        per_cell=a.per_cell,
        clean_subset=100,
        ttt_steps=a.steps,
        ttt_copies=a.copies,
        ttt_lr=a.lr,
        rotation_steps=1,
        tent_batch_size=a.tent_batch,
        progress=False,
        **({"methods": tuple(a.methods.split(","))} if a.methods else {}),
    )
    if not a.skip_table:
        table(cfg, data, cdata, clf, work, a, sev)
    if a.stream:
        stream(cfg, data, cdata, clf, a)
    if a.ttt_grid or a.rotation_lrs:
        model, _, classes = eval_step.load_classifier(clf, data)
        x, y = corrupted_images(cdata, classes, a.per_cell, cfg.seed, model.encoder.img_size)
        if a.ttt_grid:
            grid = [(int(g.split("x")[0]), int(g.split("x")[1])) for g in a.ttt_grid.split(",")]
            budget_grid(model, x, y, grid, a.lr, cfg.seed, a.dataset)
        if a.rotation_lrs:
            rotation_lrs(model, x, y, [float(v) for v in a.rotation_lrs.split(",")], a.dataset)


def table(
    cfg: eval_step.Config,
    data: Path,
    cdata: Path,
    clf: Path,
    work: Path,
    a: argparse.Namespace,
    sev: tuple[int, ...],
) -> None:
    """The robustness table of every method of ``cfg`` (components.evaluate on the corrupted set)."""
    m = eval_step.run(cfg, data, cdata, clf, work / "evaluate")
    print(
        f"TTT-MAE: {a.steps} steps x {a.copies} copies, lr {a.lr}; rotation TTT: 1 step, lr 1e-3;"
        f" {a.per_cell} images per cell, severities {sev}"
    )
    header = ["method", "clean", *[f"{c[:10]}@{sev[-1]}" for c in CORRUPTIONS], "mean", "gain [95%]", "s/img"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for meth in cfg.methods:
        row = [meth, f"{m[f'clean/{meth}/accuracy']:.2f}"]
        row += [f"{m[f'corrupted/{meth}/{c}/{sev[-1]}']:.2f}" for c in CORRUPTIONS]
        gain = (
            "-"
            if meth == "frozen"
            else f"{m[f'gain/{meth}/mean']:+.3f} "
            f"[{m[f'gain/{meth}/ci_low']:+.3f}, {m[f'gain/{meth}/ci_high']:+.3f}]"
        )
        row += [
            f"{m[f'corrupted/{meth}/mean_accuracy']:.3f}",
            gain,
            f"{m[f'cost/{meth}/seconds_per_image']:.3f}",
        ]
        print("| " + " | ".join(row) + " |")
    policy = json.loads((work / "evaluate" / eval_step.POLICY_FILE).read_text())
    print(f"images: {int(m['gain/ttt_mae_episodic/images'])} distinct source images per method")
    print(f"adaptation policy {policy['version']}: {policy['method']} - {policy['reason']}")
    print(f"  chosen on {policy['selected_on']}")
    ds = a.dataset
    for meth in cfg.methods:
        print(f"RESULT robustness_{ds}_{meth}_mean_acc {m[f'corrupted/{meth}/mean_accuracy']:.4f} acc")
    ttts = [k for k in ("ttt_mae_episodic", "ttt_mae_online") if k in cfg.methods]
    best = max(ttts, key=lambda k: m[f"gain/{k}/mean"])
    print(f"RESULT robustness_{ds}_clean_acc {m['clean/accuracy']:.4f} acc")
    print(
        f"RESULT robustness_{ds}_headroom {m['clean/accuracy'] - m['corrupted/frozen/mean_accuracy']:.4f} acc"
    )
    print(f"RESULT robustness_{ds}_policy_gain {m['policy/gain']:.4f} acc")
    print(f"RESULT robustness_{ds}_policy_gain_ci_low {m['policy/ci_low']:.4f} acc")
    print(f"RESULT robustness_{ds}_ttt_mae_gain {m[f'gain/{best}/mean']:.4f} acc ({best})")
    print(f"RESULT robustness_{ds}_ttt_mae_gain_ci_low {m[f'gain/{best}/ci_low']:.4f} acc")
    if len(ttts) == 2:
        online_vs = (
            m["corrupted/ttt_mae_online/mean_accuracy"] - m["corrupted/ttt_mae_episodic/mean_accuracy"]
        )
        print(f"RESULT robustness_{ds}_ttt_online_vs_episodic {online_vs:+.4f} acc (mean over the streams)")
    positive = sum(m[f"gain/{best}/{c}/mean"] > 0 for c in CORRUPTIONS_15 if f"gain/{best}/{c}/mean" in m)
    print(f"RESULT robustness_{ds}_ttt_mae_corruptions_gaining {positive} of 15")
    (work / "summary.json").write_text(json.dumps(m, indent=1))


def stream(cfg: eval_step.Config, data: Path, cdata: Path, clf: Path, a: argparse.Namespace) -> None:
    """TTT-MAE online vs episodic on one corruption stream (the cell ``a.stream``), paired by image."""
    model, ckpt, classes = eval_step.load_classifier(clf, data)
    x, y = load_subset(cdata / a.stream, classes, a.per_cell, cfg.seed)
    x = fit_size(x, model.encoder.img_size)
    settings = eval_step.method_settings(cfg, dict(ckpt.get("extra", {}).get("ttt", {})))
    correct = {}
    for m in ("frozen", "ttt_mae_episodic", "ttt_mae_online"):
        t0 = time.perf_counter()
        correct[m] = run_method(m, model, x, settings).argmax(1) == y
        acc, took = float(correct[m].float().mean()), time.perf_counter() - t0
        print(f"  stream {a.stream} {m}: {acc:.3f} ({took:.0f} s)")
    diff, half = _paired(correct["ttt_mae_online"], correct["ttt_mae_episodic"])
    n = len(y)
    print(f"online - episodic on {a.stream} ({n} images, a seeded shuffled order): {diff:+.3f} ± {half:.3f}")
    print(f"RESULT robustness_{a.dataset}_ttt_online_vs_episodic {diff:+.4f} acc ({a.stream}, {n} images)")


if __name__ == "__main__":
    main()
