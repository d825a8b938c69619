"""Robustness table: frozen, norm-stat, TENT, rotation TTT and TTT-MAE under common corruptions.

Bounded end-to-end run of the real steps: a micro/mini MAE pretrained here for ``--pretrain-s``
seconds (no pretrained weights exist offline), ``components.adapt`` (linear probe + rotation head),
the corruption suite of ``tessera.corruptions`` on a subset of the test split, then
``components.evaluate`` over it. Data: the embedded digits (scikit-learn's, rendered to 32 px) or
CIFAR-10 from ``/work/shared/data/cifar10`` (unpacked to /tmp, never into the repo).

    python bench/robustness.py --dataset digits --pretrain-s 120 --per-cell 20
    python bench/robustness.py --dataset cifar10 --pretrain-s 240 --per-cell 20
"""

from __future__ import annotations

import argparse
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from components import adapt as adapt_step
from components import evaluate as eval_step
from tessera import checkpoint
from tessera.corruptions import corrupt
from tessera.data.folder import load_split
from tessera.models import registry

CORRUPTIONS = ("gaussian_noise", "defocus_blur", "contrast", "jpeg_compression", "fog")


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


def corrupt_set(data: Path, out: Path, per_class: int, severities: tuple[int, ...]) -> None:
    x, y, classes = load_split(data, "test")
    keep = np.concatenate([np.flatnonzero(y.numpy() == c)[:per_class] for c in range(len(classes))])
    imgs = (x[keep].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    names = [classes[int(y[i])] for i in keep]
    for c in CORRUPTIONS:
        for s in severities:
            _save(out / c / str(s), np.stack([corrupt(im, c, s, seed=i) for i, im in enumerate(imgs)]), names)


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
    p.add_argument("--work", default="/tmp/tessera-robustness")
    a = p.parse_args()
    sev = tuple(int(s) for s in a.severities.split(","))
    work = Path(a.work) / a.dataset
    data, cdata = work / a.dataset, work / f"{a.dataset}-c"
    if not (data / "test").is_dir():
        (digits if a.dataset == "digits" else cifar10)(data)
    if not cdata.is_dir():
        corrupt_set(data, cdata, max(1, a.per_cell // 10), sev)
    x, _, _ = load_split(data, "train")
    mae, steps = pretrain(x, a.arch, a.pretrain_s)
    enc = work / "encoder.pt"
    checkpoint.save(checkpoint.make(a.arch, registry.config_of(a.arch), mae.state_dict()), enc)
    am = adapt_step.run(adapt_step.Config(methods=("linear", "knn"), epochs=60), data, enc, work / "adapt")
    cfg = eval_step.Config(per_cell=a.per_cell, clean_subset=100, ttt_steps=a.steps, ttt_copies=a.copies,
                           ttt_lr=a.lr, rotation_steps=1, progress=False)
    m = eval_step.run(cfg, data, cdata, work / "adapt" / "classifier.pt", work / "evaluate")
    print(f"dataset {a.dataset} arch {a.arch} pretrain {a.pretrain_s:.0f}s ({steps} steps of 128);"
          f" linear probe test {am['linear/test_accuracy']:.3f}, kNN {am['knn/test_accuracy']:.3f}")
    print(f"TTT-MAE: {a.steps} steps x {a.copies} copies, lr {a.lr}; rotation TTT: 1 step, lr 1e-3;"
          f" {a.per_cell} images per cell, severities {sev}")
    header = ["method", "clean", *[f"{c[:10]}@{sev[-1]}" for c in CORRUPTIONS], "mean(all)", "s/img"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for meth in cfg.methods:
        row = [meth, f"{m[f'clean/{meth}/accuracy']:.2f}"]
        row += [f"{m[f'corrupted/{meth}/{c}/{sev[-1]}']:.2f}" for c in CORRUPTIONS]
        row += [f"{m[f'corrupted/{meth}/mean_accuracy']:.3f}±{m[f'corrupted/{meth}/ci95']:.3f}",
                f"{m[f'cost/{meth}/seconds_per_image']:.3f}"]
        print("| " + " | ".join(row) + " |")
    for meth in cfg.methods:
        print(f"RESULT robustness_{a.dataset}_{meth}_mean_acc {m[f'corrupted/{meth}/mean_accuracy']:.4f} acc")
    (work / "summary.json").write_text(json.dumps(m, indent=1))


if __name__ == "__main__":
    main()
