"""Classifier recipes with headroom for test-time training, beside the linear probe (:mod:`probe`).

- ``finetune``: encoder + heads, random-resized crop + flip, AdamW with linear warm-up and cosine
  decay, label smoothing (MAE's fine-tuning recipe, He et al. 2022 A.3, without layer decay or mixup
  at this size); the rotation loss is added when the classifier has a rotation head.
- ``joint``: the Y-shaped model of Sun et al. 2020 and TTT-MAE's joint variant (Gandelsman et al.
  2022, Sec. 4): the shared encoder, the classification head and the self-supervised heads (the MAE
  decoder, and the rotation head when there is one) trained together on CE + ``ssl_weight`` x SSL
  from the MAE initialisation, so the self-supervised heads stay in step with the encoder that
  test-time training will move.
- ``vit_probe``: the frozen encoder's tokens into a :class:`~tessera.adapt.heads.ViTProbe`
  (LayerNorm, no BatchNorm), AdamW weight decay 0.2 and label smoothing 0.1 as the TTT-MAE reference
  trains its probe (main_prob.py there), crop + flip.

:func:`train_recipe` returns one record per epoch (``ce``, ``ssl``) so a test can see both fall.
When the encoder was trained (finetune, joint), the linear head's BatchNorm statistics are then
re-estimated on the clean training images (:func:`recalibrate_head_bn`): its running averages
followed augmented batches of a moving encoder, and the frozen model must not start from stale
statistics that any test-time method would "fix" (measured: a 1-epoch joint run on the digits scored
0.14 frozen against 0.75 with the test batch's statistics).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from tessera.adapt.heads import TTTClassifier

RECIPES = ("linear", "finetune", "joint", "vit_probe")
EpochHook = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class RecipeSettings:
    """Optimisation of one recipe (the linear probe has its own, :class:`probe.TrainSettings`)."""

    epochs: int = 10  # passes over the training images
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.05  # AdamW weight decay
    batch_size: int = 64  # images per step
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to 0
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    ssl_weight: float = 1.0  # joint (and finetune with a rotation head): weight of the SSL losses
    mask_ratio: float = 0.75  # joint: MAE masking of the reconstruction loss
    crop_scale: float = 0.35  # random-resized crop keeps at least this fraction of the area
    rotation_share: float = 1.0  # fraction of each batch rotated for the rotation loss (its cost)
    flip: bool = True  # horizontal flips (off for data whose mirror image is another class: digits)
    seed: int = 0  # shuffling, augmentation, masks


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear from 0 to 1 over ``warmup`` steps, then cosine to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def augment(images: torch.Tensor, scale: float, gen: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Per image: a random-resized crop (area fraction in [scale, 1], aspect 3/4-4/3) and, with
    ``flip``, a horizontal flip half the time; ``scale >= 1``: no crop."""
    b, _, h, w = images.shape
    if scale >= 1.0:
        if not flip:
            return images
        flips = torch.rand(b, generator=gen) < 0.5
        return torch.where(flips[:, None, None, None], images.flip(-1), images)
    out = torch.empty_like(images)
    for i in range(b):
        area = float(torch.empty(1).uniform_(scale, 1.0, generator=gen)) * h * w
        ratio = math.exp(float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)))
        ch = max(1, min(h, round(math.sqrt(area / ratio))))
        cw = max(1, min(w, round(math.sqrt(area * ratio))))
        y0 = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        crop = images[i : i + 1, :, y0 : y0 + ch, x0 : x0 + cw]
        crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        if flip and bool(torch.rand(1, generator=gen) < 0.5):
            crop = crop.flip(-1)
        out[i] = crop[0].clamp(0.0, 1.0)
    return out


def trainable_parameters(model: TTTClassifier, recipe: str) -> list[nn.Parameter]:
    """What each recipe trains: the head (vit_probe), encoder + heads (finetune), everything (joint)."""
    heads = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    if recipe == "vit_probe":
        return heads
    if recipe == "finetune":
        return list(model.encoder.parameters()) + heads
    if recipe == "joint":
        return list(model.parameters())
    raise ValueError(f"recipe must be one of {RECIPES[1:]}, got {recipe!r}")


def _ssl_loss(model: TTTClassifier, x: torch.Tensor, recipe: str, s: RecipeSettings, gen: torch.Generator):
    """The self-supervised part of the loss: MAE reconstruction (joint) + rotation (when a head)."""
    loss = x.new_zeros(())
    if recipe == "joint" and model.has_decoder:
        noise = torch.rand(x.shape[0], model.encoder.num_patches, generator=gen)
        mae: Any = model.backbone
        latent, mask, ids_restore = mae.forward_encoder(x, s.mask_ratio, noise)
        loss = loss + mae.forward_loss(x, mae.forward_decoder(latent, ids_restore), mask).mean()
    if model.rot_head is not None and recipe in ("joint", "finetune") and s.rotation_share > 0:
        xs = x[: max(1, math.ceil(s.rotation_share * x.shape[0]))]  # the batch is shuffled already
        k = torch.randint(0, 4, (xs.shape[0],), generator=gen)
        xr = torch.stack([torch.rot90(img, int(r), dims=(1, 2)) for img, r in zip(xs, k, strict=True)])
        loss = loss + F.cross_entropy(model.rotation_logits(xr), k)
    return loss


@torch.no_grad()
def recalibrate_head_bn(model: TTTClassifier, images: torch.Tensor, max_images: int = 5000) -> bool:
    """Set the head's BatchNorm running statistics to those of ``images``' embeddings (at most
    ``max_images``, a seeded random subset: the images may be sorted by class); -> whether the head
    has such a BatchNorm."""
    from tessera.models.embed import embed

    bn = getattr(model.head, "bn", None)
    if not isinstance(bn, nn.BatchNorm1d) or bn.running_mean is None or bn.running_var is None:
        return False
    if len(images) > max_images:
        images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:max_images]]
    feats = embed(model, images)  # (n, D)
    bn.running_mean.copy_(feats.mean(dim=0))
    bn.running_var.copy_(feats.var(dim=0, unbiased=True))
    return True


def train_recipe(
    model: TTTClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: str,
    settings: RecipeSettings,
    on_epoch: EpochHook | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place with ``recipe`` on (N, C, H, W) ``images``; -> per-epoch ``ce``, ``ssl``."""
    params = trainable_parameters(model, recipe)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]  # norms, biases, tokens: no weight decay
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
    )
    gen = torch.Generator().manual_seed(settings.seed)
    steps_per_epoch = max(1, math.ceil(len(images) / settings.batch_size))
    total, warmup = settings.epochs * steps_per_epoch, round(settings.warmup_epochs * steps_per_epoch)
    history: list[dict[str, float]] = []
    step = 0
    model.train()
    if recipe == "vit_probe":
        model.backbone.eval()  # frozen encoder: no dropout, no statistics change
    try:
        for epoch in tqdm(range(settings.epochs), desc=recipe, leave=False):
            perm = torch.randperm(len(images), generator=gen)
            sums = {"ce": 0.0, "ssl": 0.0}
            seen = 0
            for i in range(0, len(images), settings.batch_size):
                idx = perm[i : i + settings.batch_size]
                if len(idx) < 2:
                    continue
                for group in opt.param_groups:
                    group["lr"] = settings.lr * warmup_cosine(step, total, warmup)
                x = augment(images[idx], settings.crop_scale, gen, settings.flip)
                if recipe == "vit_probe":
                    with torch.no_grad():
                        tokens = model.encoder(x)
                    logits = model.classify_tokens(tokens)
                else:
                    logits = model(x)
                ce = F.cross_entropy(logits, labels[idx], label_smoothing=settings.label_smoothing)
                ssl = _ssl_loss(model, x, recipe, settings, gen)
                loss = ce + settings.ssl_weight * ssl
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                sums["ce"] += float(ce.detach()) * len(idx)
                sums["ssl"] += float(ssl.detach()) * len(idx)
                seen += len(idx)
            record = {k: v / max(seen, 1) for k, v in sums.items()}
            history.append(record)
            if on_epoch is not None:
                on_epoch(epoch, {f"{recipe}/{k}": v for k, v in record.items()})
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
    if recipe in ("finetune", "joint"):
        recalibrate_head_bn(model, images)
    return history
