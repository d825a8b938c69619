"""The pure training loop shared by the pretraining methods (and reusable by other steps).

As in MAE's ``engine_pretrain.train_one_epoch`` (He et al. 2022): the learning rate is set per step
(warm-up + cosine), the forward runs under bf16 autocast on CUDA, and there is no file I/O here: the
caller saves checkpoints and reports metrics in ``on_epoch_end``. Each epoch re-seeds the random
generators from ``(seed, epoch, rank)`` and the sampler shuffles by ``(seed, epoch)``, so a run
resumed at an epoch boundary follows the same trajectory as one that was never interrupted.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from tessera.errors import TesseraError
from tessera.training.distributed import DistEnv, mean_over_ranks
from tessera.training.schedule import set_lr, warmup_cosine

LossFn = Callable[[nn.Module, Any], torch.Tensor]
EpochHook = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class LoopSettings:
    """What the loop needs to know; the component's config maps onto it."""

    epochs: int
    lr: float
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    amp: bool = True  # bf16 autocast, on CUDA only
    clip_grad: float = 0.0  # 0: no clipping
    seed: int = 0


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed torch, numpy and random from (seed, epoch, rank): masks and augmentations per epoch."""
    s = (seed * 1_000_003 + epoch * 1009 + rank) % (2**31)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def make_loader(
    dataset: Dataset, batch_size: int, env: DistEnv, seed: int, num_workers: int = 0
) -> DataLoader:
    """Shuffled batches of this rank's shard (``batch_size`` per process; the last partial batch dropped).

    A ``DistributedSampler`` even in a world of one, so the order depends only on (seed, epoch).
    """
    sampler: DistributedSampler = DistributedSampler(
        dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed, drop_last=True
    )
    per_rank = len(sampler)
    if per_rank < 2:
        n = len(dataset)  # type: ignore[arg-type]
        raise TesseraError(f"{n} images are too few for {env.world_size} process(es): add data")
    return DataLoader(
        dataset,
        batch_size=min(batch_size, per_rank),
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=env.device.type == "cuda",
        drop_last=True,
        persistent_workers=False,
    )


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return type(batch)(_to(b, device) for b in batch)


def _count(batch: Any) -> int:
    return int(batch.shape[0]) if isinstance(batch, torch.Tensor) else _count(batch[0])


def fit(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    loss_fn: LossFn,
    settings: LoopSettings,
    env: DistEnv,
    start_epoch: int = 0,
    start_step: int = 0,
    after_step: Callable[[int], None] | None = None,
    on_epoch_end: EpochHook | None = None,
    progress: bool = True,
) -> int:
    """Train epochs ``start_epoch .. settings.epochs - 1``; return the final optimizer step.

    ``loss_fn(model, batch)`` returns the scalar loss; ``after_step(step)`` runs after each optimizer
    step (e.g. BYOL's target update); ``on_epoch_end(epoch, step, metrics)`` after each epoch with
    ``loss`` (mean over the epoch and the ranks), ``lr``, ``images_per_s`` (all ranks) and ``seconds``.
    """
    steps_per_epoch = len(loader)
    total_steps = settings.epochs * steps_per_epoch
    warmup_steps = round(settings.warmup_epochs * steps_per_epoch)
    step, lr = start_step, settings.lr
    use_amp = settings.amp and env.device.type == "cuda"
    for epoch in range(start_epoch, settings.epochs):
        seed_epoch(settings.seed, epoch, env.rank)
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        model.train()
        loss_sum = torch.zeros((), device=env.device)
        n_images, t0 = 0, time.perf_counter()
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{settings.epochs}",
            leave=False,
            disable=not (progress and env.is_main),
            dynamic_ncols=True,
        )
        for i, batch in enumerate(bar):
            lr = warmup_cosine(step, total_steps, warmup_steps, settings.lr, settings.min_lr)
            set_lr(optimizer, lr)
            batch = _to(batch, env.device)
            with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.clip_grad > 0:
                nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad)
            optimizer.step()
            step += 1
            if after_step is not None:
                after_step(step)
            loss_sum += loss.detach().float()
            n_images += _count(batch)
            if i % 10 == 0 and bar.disable is False:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
        if env.device.type == "cuda":
            torch.cuda.synchronize(env.device)
        seconds = time.perf_counter() - t0
        mean_loss = mean_over_ranks(loss_sum.item() / max(steps_per_epoch, 1), env)
        if not math.isfinite(mean_loss):
            raise TesseraError(
                f"loss became {mean_loss} in epoch {epoch + 1}: lower pretrain.lr or check the data"
            )
        metrics = {
            "loss": mean_loss,
            "lr": lr,
            "images_per_s": n_images * env.world_size / max(seconds, 1e-9),
            "seconds": seconds,
        }
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, step, metrics)
    return step
