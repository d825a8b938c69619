"""The names and defaults every layer shares, in one module that imports nothing heavy.

The command line's ``--help``, the steps' configs, the library, the registry and serving all read
these, so none keeps a copy (``import tessera.names`` loads no torch or numpy).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Hendrycks & Dietterich 2019: the 15 ImageNet-C / CIFAR-10-C corruptions, in their order ...
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
# ... and the 4 extra ones (held out for choosing hyper-parameters, the CIFAR-10-C convention).
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS: tuple[str, ...] = CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# The one default split (train, val, test) of `tessera data import`, `data.split` and the embedded set.
DEFAULT_SPLIT: tuple[float, float, float] = (0.7, 0.1, 0.2)

PRETRAIN_METHODS: tuple[str, ...] = ("mae", "simclr", "byol")
ADAPT_METHODS: tuple[str, ...] = ("linear", "knn", "finetune")
# The test-time methods evaluate scores (names as in the metric keys).
EVAL_METHODS: tuple[str, ...] = (
    "frozen",
    "normstat",
    "tent",
    "tent_episodic",
    "rotation_episodic",
    "rotation_online",
    "ttt_mae_episodic",
    "ttt_mae_online",
)

# The registry's three bundles: kind -> registered model name.
BUNDLES: dict[str, str] = {
    "encoder": "tessera-encoder",
    "classifier": "tessera-ttt-classifier",
    "generator": "tessera-generator",
}

# TTT-MAE (Gandelsman et al. 2022) per input: SGD steps, masked copies per step, learning rate,
# momentum and mask ratio. A classifier checkpoint stores its own in ``extra["ttt"]``.
TTT_DEFAULTS: dict[str, Any] = {"steps": 20, "copies": 16, "lr": 5e-3, "momentum": 0.9, "mask_ratio": 0.75}


def ttt_defaults(stored: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``TTT_DEFAULTS`` overlaid with what a checkpoint stored (``extra["ttt"]``)."""
    return {**TTT_DEFAULTS, **dict(stored or {})}
