"""Adaptation: linear probe, kNN, fine-tuning, and test-time training (TTT-MAE, rotation TTT, TENT).

Importing this package registers the ``ttt_mae_classifier`` architecture in the model registry
(:mod:`tessera.adapt.heads`).
"""

from tessera.adapt.batched import BatchedTTTResult, adapt_batch
from tessera.adapt.heads import ARCH, LinearProbe, RotationHead, TTTClassifier
from tessera.adapt.test_time import TestTimeTrainer, TTTSettings
from tessera.adapt.ttt_mae import ttt_mae_predict, ttt_mae_trainer, ttt_noise

__all__ = [
    "ARCH",
    "BatchedTTTResult",
    "LinearProbe",
    "RotationHead",
    "TTTClassifier",
    "TTTSettings",
    "TestTimeTrainer",
    "adapt_batch",
    "ttt_mae_predict",
    "ttt_mae_trainer",
    "ttt_noise",
]
