"""Data parallelism through ``torchrun`` (PyTorch DistributedDataParallel, Li et al. VLDB 2020).

``torchrun --nproc_per_node N -m components.pretrain ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address; :func:`init_from_env` joins the process group (NCCL on
CUDA, gloo on CPU). A plain ``python -m`` run is a world of one and starts no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import cast

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank, the world size, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    started_group: bool = False  # whether init_from_env started the process group (and must end it)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and reports to the tracker."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else the CPU; or an explicit torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def init_from_env(device: str = "auto") -> DistEnv:
    """Join the process group ``torchrun`` describes in the environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    started = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
        started = True
    return DistEnv(rank, world, local_rank, dev, started)


def wrap(model: nn.Module, env: DistEnv) -> nn.Module:
    """DistributedDataParallel around ``model`` when the world is larger than one."""
    if not env.distributed:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or ``torch.compile`` wrappers (for state dicts and hooks)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = cast(nn.Module, model._orig_mod)
        else:
            return model


def mean_over_ranks(value: float, env: DistEnv) -> float:
    """The mean of a scalar over all ranks (the value itself in a world of one)."""
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return float(t.item()) / env.world_size


def barrier(env: DistEnv) -> None:
    """Wait for every rank (nothing in a world of one)."""
    if env.distributed:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    """Leave the process group if :func:`init_from_env` started it."""
    if env.started_group and dist.is_initialized():
        dist.destroy_process_group()
