"""Generator quality: encoder-space FD/KID of the IC-GAN over training, on the embedded digits and CIFAR-10.

Usage: python bench/generator_quality.py [--sets digits,cifar10] [--encoder CKPT] [--mae-steps 300]
       [--epochs 4] [--steps-per-epoch 75] [--cifar-per-class 300] [--figures docs/figures]

Per data set: a small MAE is trained briefly on raw pixels (unless ``--encoder`` is given), then the
generator (``components.train_generator.run``). Two references are measured in the same run and the
same encoder space: the untrained generator (``fd_initial``, a ceiling) and held-out real images
against the training images (``fd_real``, a floor). FD/KID here use the Tessera encoder, not
Inception: the numbers are not comparable with published FIDs. CIFAR-10 comes from
/work/shared/data/cifar10/*.tar (unpacked to /tmp); the digits are built from the installed wheels.
Writes the final sample grids and an inpainting picture under ``--figures``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
import time
from pathlib import Path

import torch

from components.train_generator import Config, run
from tessera import checkpoint
from tessera.data.embedded import build_embedded
from tessera.data.folder import load_split
from tessera.generators.inpaint import inpaint, region_mask
from tessera.generators.metrics import EncoderSpaceScore
from tessera.models import registry
from tessera.viz import save_grid

CIFAR = Path("/work/shared/data/cifar10")
MAE_ARCH = "mae_vit_micro_patch4"


class Collect:
    """A tracker that keeps the per-epoch metrics."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))

    def log_artifact(self, path: str | Path) -> None:
        return None


def digits(root: Path) -> Path:
    out = root / "digits"
    if not (out / "manifest.json").exists():
        build_embedded(out, unlabeled_patches=0)
    return out


def cifar10(root: Path, per_class: int, val_per_class: int) -> Path:
    """Unpack ``per_class`` train and ``val_per_class`` test JPEGs per class into root/cifar10/{train,val}."""
    out = root / "cifar10"
    if (out / "train").is_dir():
        return out
    for tar_name, split, limit in (
        ("cifar10-train-jpeg.tar", "train", per_class),
        ("cifar10-test-jpeg.tar", "val", val_per_class),
    ):
        counts: dict[str, int] = {}
        with tarfile.open(CIFAR / tar_name) as tf:
            for m in tf:
                parts = Path(m.name).parts
                if not m.isfile() or len(parts) != 3:
                    continue
                cls = parts[1]
                if counts.get(cls, 0) >= limit:
                    continue
                counts[cls] = counts.get(cls, 0) + 1
                dest = out / split / cls / parts[2]
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                assert src is not None
                dest.write_bytes(src.read())
    return out


def train_mae(images: torch.Tensor, steps: int, path: Path, seed: int = 0) -> Path:
    """A micro MAE on raw pixels (mask ratio 0.75), AdamW, batch 64: the encoder the generator uses."""
    torch.manual_seed(seed)
    cfg = registry.config_of(MAE_ARCH)
    mae = registry.build(MAE_ARCH)
    opt = torch.optim.AdamW(mae.parameters(), lr=1.5e-3, weight_decay=0.05, betas=(0.9, 0.95))
    for step in range(steps):
        if step % 50 == 0:
            print(f"  mae step {step}/{steps}", flush=True)
        loss, _, _ = mae(images[torch.randint(images.shape[0], (64,))])
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"  mae {MAE_ARCH}: {steps} steps, last loss {loss.item():.4f}")
    checkpoint.save(checkpoint.make(MAE_ARCH, cfg, mae.state_dict()), path)
    return path


def one_set(name: str, data: Path, args: argparse.Namespace, work: Path, figures: Path) -> dict[str, float]:
    print(f"== {name}: {data}")
    train, _, _ = load_split(data, "train")
    val, val_labels, _ = load_split(data, "val")
    t0 = time.time()
    enc_path = (
        Path(args.encoder) if args.encoder else train_mae(train, args.mae_steps, work / f"{name}-mae.pt")
    )
    t_mae = time.time() - t0
    encoder = registry.from_checkpoint(checkpoint.load(enc_path)).eval()
    cfg = Config(
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        g_ch=args.ch,
        d_ch=args.ch,
        eval_samples=args.eval_samples,
        kid_subset_size=100,
        progress=False,
    )
    # Floor: held-out real images against the training images, same sample count, same encoder.
    g = torch.Generator().manual_seed(1)
    real_ref = train[torch.randperm(train.shape[0], generator=g)[: cfg.eval_samples]]
    floor = EncoderSpaceScore(encoder, real_ref, cfg.kid_subset_size, cfg.kid_subsets).score(
        val[torch.randperm(val.shape[0], generator=g)[: cfg.eval_samples]]
    )
    out = work / f"{name}-gen"
    shutil.rmtree(out, ignore_errors=True)
    tracker, t1 = Collect(), time.time()
    m = run(cfg, data, enc_path, out, tracker=tracker, data_version={"md5": "bench-generator-quality"})
    t_gen = time.time() - t1
    print(f"  epoch 0 (untrained): fd {m['fd_initial']:.4f} kid {m['kid_initial']:.5f}")
    for step, row in tracker.rows:
        print(
            f"  epoch {step}: fd {row['fd']:.4f} kid {row['kid']:.5f} "
            f"(d_loss {row['d_loss']:.3f}, g_loss {row['g_loss']:.3f})"
        )
    print(
        f"  real held-out vs train: fd {floor['fd']:.4f} kid {floor['kid']:.5f} "
        f"[n_real {int(m['n_real'])}, n_fake {int(m['n_fake'])}]"
    )
    print(
        f"  fd / fd_untrained = {m['fd'] / m['fd_initial']:.3f}; "
        f"fd / fd_real = {m['fd'] / max(floor['fd'], 1e-12):.2f}"
    )
    print(
        f"  time: mae {t_mae:.0f} s, generator {t_gen:.0f} s "
        f"({m['steps']:.0f} steps, {m['train_images']:.0f} images)"
    )
    figures.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "grids" / "samples.png", figures / f"generator_{name}.png")
    # Inpainting with the same MAE: rows = original, region greyed, filled (visible pixels untouched).
    first = [int((val_labels == c).nonzero()[0]) for c in val_labels.unique().tolist()]
    x = val[first[:8]]  # one image per class
    region = region_mask(x.shape[-2], x.shape[-1], box=(4, 12, 28, 20))  # a horizontal band
    filled = inpaint(encoder, x, region)
    save_grid(
        [x, torch.where(region, torch.full_like(x, 0.5), x), filled], figures / f"inpaint_{name}.png", scale=3
    )
    return {
        "fd": m["fd"],
        "kid": m["kid"],
        "fd_initial": m["fd_initial"],
        "kid_initial": m["kid_initial"],
        "fd_real": floor["fd"],
        "kid_real": floor["kid"],
        "n": m["n_fake"],
        "seconds": t_gen,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", default="digits,cifar10")
    p.add_argument("--encoder", default="", help="an MAE checkpoint to use instead of training one")
    p.add_argument("--mae-steps", type=int, default=300)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps-per-epoch", type=int, default=75)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--ch", type=int, default=32)
    p.add_argument("--eval-samples", type=int, default=256)
    p.add_argument("--cifar-per-class", type=int, default=300)
    p.add_argument("--work", default="/tmp/tessera-bench-gen")
    p.add_argument("--figures", default="docs/figures")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work, figures = Path(args.work), Path(args.figures)
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.sets.split(","):
        data = digits(work) if name == "digits" else cifar10(work, args.cifar_per_class, 50)
        results[name] = one_set(name, data, args, work, figures)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    for name, r in results.items():
        print(f"RESULT generator_{name}_fd {r['fd']:.4f} encoder-space-FD")
        print(f"RESULT generator_{name}_fd_untrained {r['fd_initial']:.4f} encoder-space-FD")
        print(f"RESULT generator_{name}_fd_real_floor {r['fd_real']:.4f} encoder-space-FD")
        print(f"RESULT generator_{name}_kid {r['kid']:.5f} encoder-space-KID")
        print(f"RESULT generator_{name}_fd_ratio {r['fd'] / r['fd_initial']:.3f} x-untrained")


if __name__ == "__main__":
    main()
