"""Rotation-prediction test-time training (Sun et al., "Test-Time Training with Self-Supervision for
Generalization under Distribution Shifts", ICML 2020).

The self-supervised task predicts which of the four right-angle rotations was applied to an image;
its head is trained jointly with the classifier (:mod:`tessera.adapt.probe`). At test time the
shared encoder takes ``steps`` SGD steps on the rotation loss of the four rotations of the one test
input (heads frozen), episodically (restored after every input) or online along the stream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.adapt.heads import TTTClassifier
from tessera.adapt.test_time import TestTimeTrainer, TTTSettings
from tessera.errors import ModelError


def rotate_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) -> the four rotations (4N, C, H, W) and their labels (4N,) in 0..3 (x 90 degrees)."""
    rotated = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])  # (4N, C, H, W)
    labels = torch.arange(4).repeat_interleave(images.shape[0])  # (4N,)
    return rotated, labels


def rotation_loss(model: TTTClassifier, x: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the rotation head over the four rotations of ``x`` (N, C, H, W): scalar."""
    rotated, labels = rotate_batch(x)
    return F.cross_entropy(model.rotation_logits(rotated), labels)


def rotation_trainer(model: TTTClassifier, settings: TTTSettings) -> TestTimeTrainer:
    """A :class:`TestTimeTrainer` on the rotation loss that updates the encoder (heads frozen).

    ``settings.copies`` and ``mask_ratio`` do not apply: each step sees the four rotations.
    """
    if model.rot_head is None:
        raise ModelError(
            "rotation TTT needs a rotation head: re-run `tessera adapt` with"
            " `adapt.rotation_head: true`, or drop the rotation methods from `evaluate.methods`"
        )

    def loss_fn(m: TTTClassifier, x: torch.Tensor, index: int, step: int) -> torch.Tensor:
        return rotation_loss(m, x)

    return TestTimeTrainer(model, list(model.encoder.parameters()), loss_fn, settings)


def rotation_ttt_predict(
    model: TTTClassifier, images: torch.Tensor, settings: TTTSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation TTT over ``images`` (N, C, H, W): -> probabilities (N, K), losses (N, steps)."""
    return rotation_trainer(model, settings).run(images)
