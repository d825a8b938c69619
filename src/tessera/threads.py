"""How many torch intra-op threads a process should run: the rule, and the machine it reads.

On a shared 2-core machine a pretraining step took 2.2-3.9 s with torch's default threads and
0.7-0.9 s with one (OpenMP threads spin-wait for each other while other processes hold the cores);
a TorchServe worker with 2 threads took ~100 ms where 1 thread took 1.5 ms. ``bench/threads.py``
measures 1 vs 2 threads interleaved, beside the machine's own load and beside an extra busy process
(bench/RESULTS.md, "Torch threads"): on 2 cores with one core busy elsewhere, 2 threads were 2.2-16x
slower. The rule:

* one thread when the process has <= 2 cores;
* else the cores divided by the processes sharing them (``sharers``: serving workers), capped by the
  cores the load leaves idle (``round(cores - load)``, 1-minute load average), at least 1; so a
  machine at load >= cores - 0.5 gets one thread.

``TESSERA_TORCH_THREADS`` (an integer >= 1) overrides the rule; 0 or unset leaves it to the rule.
:func:`choose` is the rule (pure); :func:`apply` reads the machine and sets torch's thread count.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

ENV = "TESSERA_TORCH_THREADS"
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))

logger = logging.getLogger(__name__)


def choose(cores: int, sharers: int = 1, load: float | None = None, override: int | None = None) -> int:
    """Intra-op threads for one process of ``sharers`` on ``cores`` cores at 1-minute ``load``.

    ``override`` (>= 1) wins; ``load`` None means unknown (treated as idle). Never below 1.
    """
    if override is not None and override >= 1:
        return int(override)
    cores, sharers = max(1, int(cores)), max(1, int(sharers))
    if cores <= 2:
        return 1
    threads = cores // sharers
    if load is not None:
        threads = min(threads, int(cores - max(0.0, load) + 0.5))  # the cores the load leaves idle
    return max(1, threads)


def parse_cpu_max(text: str) -> float | None:
    """The CPU quota in cores of a cgroup v2 ``cpu.max`` line (``"<quota> <period>"``); None: no limit.

    ``"max 100000"`` -> None, ``"200000 100000"`` -> 2.0, ``"50000 100000"`` -> 0.5.
    """
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = float(parts[0])
        period = float(parts[1]) if len(parts) > 1 else 100000.0
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def cgroup_quota() -> float | None:
    """The process's cgroup CPU quota in cores (v2 ``cpu.max``, else v1 CFS files); None: none."""
    try:
        if CGROUP_V2.is_file():
            return parse_cpu_max(CGROUP_V2.read_text())
        quota, period = CGROUP_V1
        if quota.is_file() and period.is_file():
            return parse_cpu_max(f"{quota.read_text().strip()} {period.read_text().strip()}")
    except (OSError, ValueError):
        return None
    return None


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup quota (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_quota()
    if quota is not None:
        cores = min(cores, int(quota))  # 1.5 cores of quota: 1 thread (2 would be throttled)
    return max(1, cores)


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def override_from_env() -> int | None:
    """``TESSERA_TORCH_THREADS`` as an integer >= 1, else None (unset, 0, or not a number)."""
    raw = os.environ.get(ENV, "").strip()
    try:
        value = int(raw)
    except ValueError:
        if raw:
            logger.warning("%s=%r is not an integer; using the thread rule", ENV, raw)
        return None
    return value if value >= 1 else None


def threads_for(sharers: int = 1, override: int | None = None) -> int:
    """:func:`choose` on this machine: available cores, load, ``override`` or ``TESSERA_TORCH_THREADS``."""
    given = override if override is not None and override >= 1 else override_from_env()
    return choose(available_cores(), sharers, load_average(), given)


def apply(sharers: int = 1) -> int:
    """Set torch's intra-op threads to :func:`threads_for` ``(sharers)`` and return it; never raises."""
    try:
        threads = threads_for(sharers)
    except Exception:  # noqa: BLE001 - reading the machine must never stop a step
        logger.warning("could not read the machine; 1 torch thread", exc_info=True)
        threads = 1
    try:
        import torch

        torch.set_num_threads(threads)
        threads = int(torch.get_num_threads())
    except Exception:  # noqa: BLE001 - torch refusing leaves its own count
        logger.warning("could not set %d torch threads", threads, exc_info=True)
    logger.info("torch threads: %d", threads)
    return threads


__all__ = [
    "ENV",
    "apply",
    "available_cores",
    "cgroup_quota",
    "choose",
    "load_average",
    "override_from_env",
    "parse_cpu_max",
    "threads_for",
]
