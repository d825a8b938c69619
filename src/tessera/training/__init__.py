"""The training loop, schedules, AdamW groups, data parallelism and resuming, shared by the steps."""

from tessera.training.distributed import DistEnv, init_from_env, shutdown, unwrap, wrap
from tessera.training.loop import LoopSettings, fit, make_loader, seed_epoch
from tessera.training.optim import make_optimizer, param_groups
from tessera.training.resume import resume, rng_state
from tessera.training.schedule import set_lr, warmup_cosine

__all__ = [
    "DistEnv",
    "LoopSettings",
    "fit",
    "init_from_env",
    "make_loader",
    "make_optimizer",
    "param_groups",
    "resume",
    "rng_state",
    "seed_epoch",
    "set_lr",
    "shutdown",
    "unwrap",
    "warmup_cosine",
    "wrap",
]
