"""Images/s of the MAE training step against the MAE paper's own baseline, measured in one run.

He et al. 2022 (sec. 3, Table 1c) encode only the visible patches; their baseline feeds the mask
tokens through the encoder (every token encoded) and uses the same decoder. Both models here have
the same weights and decoder; a training step is forward + backward + AdamW step. Steps of the two
are interleaved in rounds so that load from other processes hits both alike; the median step time
of each is reported.

    python bench/pretrain_throughput.py                                   # CPU config, mask 0.75
    python bench/pretrain_throughput.py --device cuda --arch mae_vit_base_patch16 --batch-size 64
    python bench/pretrain_throughput.py --cifar-dir /tmp/cifar10 --cifar-images 10000 --cifar-epochs 6

With ``--cifar-dir`` (a folder with ``train/<class>/*.jpg``, e.g. the unpacked CIFAR-10 tar) it also
runs a short pretraining through ``components.pretrain.run`` and writes a loss curve and the last
reconstruction grid to ``--figures``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tessera.models import build  # noqa: E402
from tessera.models.mae import MaskedAutoencoderViT  # noqa: E402
from tessera.training import make_optimizer  # noqa: E402


class EncoderMaskTokenMAE(MaskedAutoencoderViT):
    """The paper's baseline: masked patches become a learned mask token *before* the encoder, so the
    encoder processes all L tokens; the decoder (same as MAE's) receives the L encoded tokens."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.enc_mask_token = torch.nn.Parameter(torch.zeros(1, 1, self.encoder.embed_dim))
        torch.nn.init.normal_(self.enc_mask_token, std=0.02)

    def forward_encoder(self, imgs, mask_ratio, noise=None):  # type: ignore[no-untyped-def]
        x = self.encoder.tokens(imgs)  # (B, L, D)
        _, mask, ids_restore, _ = self.random_masking(x, mask_ratio, noise)
        m = mask.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
        x = x * (1 - m) + (self.enc_mask_token + self.encoder.pos_embed[:, 1:, :]) * m
        return self.encoder.encode_tokens(x), mask, ids_restore  # (B, 1+L, D)

    def forward_decoder(self, latent, ids_restore):  # type: ignore[no-untyped-def]
        x = self.decoder_embed(latent) + self.decoder_pos_embed  # (B, 1+L, Dd): no mask tokens to add
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]


def step_time(
    model: torch.nn.Module, opt: torch.optim.Optimizer, imgs: torch.Tensor, mask_ratio: float, amp: bool
) -> float:
    """Seconds for one forward + backward + optimizer step."""
    if imgs.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.autocast(imgs.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = model(imgs, mask_ratio=mask_ratio)[0]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if imgs.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def throughput(args: argparse.Namespace) -> float:
    device = torch.device(args.device)
    torch.manual_seed(0)
    mae = build(args.arch).to(device)
    from tessera.models import config_of

    base = EncoderMaskTokenMAE(**config_of(args.arch)).to(device)
    base.load_state_dict(mae.state_dict(), strict=False)
    if args.compile:
        mae, base = torch.compile(mae), torch.compile(base)  # type: ignore[assignment]
    size = config_of(args.arch)["img_size"]
    imgs = torch.rand(args.batch_size, 3, size, size, device=device)
    amp = device.type == "cuda"
    runs = {name: (m, make_optimizer(m, 1e-4, 0.05)) for name, m in (("mae", mae), ("baseline", base))}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.warmup):
        for model, opt in runs.values():
            step_time(model, opt, imgs, args.mask_ratio, amp)
    for _ in range(args.rounds):
        for name, (model, opt) in runs.items():
            times[name] += [step_time(model, opt, imgs, args.mask_ratio, amp) for _ in range(args.steps)]
    ips = {k: args.batch_size / statistics.median(v) for k, v in times.items()}
    ratio = ips["mae"] / ips["baseline"]
    print(
        f"arch {args.arch}  device {device}  batch {args.batch_size}  mask ratio {args.mask_ratio}"
        f"  threads {torch.get_num_threads()}"
    )
    print(f"MAE (visible patches only):     {ips['mae']:9.1f} images/s")
    print(f"baseline (mask tokens in enc.): {ips['baseline']:9.1f} images/s")
    print(f"speed-up: {ratio:.2f}x (target >= 2.5x)")
    tag = f"{args.arch}_{device.type}"
    print(f"RESULT pretrain_mae_images_per_s_{tag} {ips['mae']:.1f} images/s")
    print(f"RESULT pretrain_baseline_images_per_s_{tag} {ips['baseline']:.1f} images/s")
    print(f"RESULT pretrain_mae_speedup_{tag} {ratio:.2f} x")
    return ratio


class _ListTracker:
    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.artifacts: list[str] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path: str | Path) -> None:
        self.artifacts.append(str(path))


def class_subset(src: Path, n: int, dst: Path) -> Path:
    """A folder ``dst/train/<class>/`` of symlinks to the first ``n / classes`` images of each class
    (so the whole 50,000-image set is never decoded for a short run)."""
    classes = sorted(p for p in (src / "train").iterdir() if p.is_dir())
    per_class = max(1, n // len(classes))
    for c in classes:
        (dst / "train" / c.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(c.iterdir())[:per_class]:
            link = dst / "train" / c.name / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    return dst


def cifar_run(args: argparse.Namespace) -> None:
    import shutil

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from components.pretrain import Config, run

    out = Path(args.cifar_out)
    if out.exists():
        shutil.rmtree(out)
    data = class_subset(Path(args.cifar_dir), args.cifar_images, Path(f"{args.cifar_out}-data"))
    cfg = Config(
        arch=args.cifar_arch,
        epochs=args.cifar_epochs,
        batch_size=128,
        lr=args.cifar_lr,
        warmup_epochs=1.0,
        device=args.device,
        grid_every=args.cifar_epochs,
    )
    tracker = _ListTracker()
    t0 = time.perf_counter()
    metrics = run(cfg, data, out, tracker, data_version={"md5": "cifar10-train-jpeg"}, progress=False)
    wall = time.perf_counter() - t0
    epochs = [s for s, _ in tracker.metrics]
    losses = [m["pretrain/loss"] for _, m in tracker.metrics]
    figures = Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 3.0), dpi=100)
    ax.plot(epochs, losses, marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MAE loss (masked patches, raw pixels)")
    ax.set_title(f"{args.cifar_arch} on {int(metrics['images'])} CIFAR-10 images", fontsize=9)
    fig.tight_layout()
    fig.savefig(figures / "pretrain_cifar10_loss.png")
    shutil.copy(tracker.artifacts[-1], figures / "pretrain_cifar10_recon.png")
    print(json.dumps({"cifar_metrics": metrics, "wall_s": round(wall, 1), "losses": losses}))
    print(f"RESULT pretrain_cifar10_final_loss {metrics['loss']:.4f} mse")
    print(f"RESULT pretrain_cifar10_images_per_s {metrics['images_per_s']:.1f} images/s")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="mae_vit_tiny_patch4")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=3, help="timed steps per model per round")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--cifar-dir", default=None, help="folder with train/<class>/*.jpg (CIFAR-10)")
    p.add_argument("--cifar-arch", default="mae_vit_tiny_patch4")
    p.add_argument("--cifar-images", type=int, default=10000)
    p.add_argument("--cifar-epochs", type=int, default=6)
    p.add_argument("--cifar-lr", type=float, default=1.5e-3)
    p.add_argument("--cifar-out", default="/tmp/tessera-bench-pretrain")
    p.add_argument("--figures", default="docs/figures")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    throughput(args)
    if args.cifar_dir:
        cifar_run(args)


if __name__ == "__main__":
    main()
