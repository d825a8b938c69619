"""Test-time training with masked autoencoders (Gandelsman, Sun, Chen, Efros, NeurIPS 2022).

For each test input: ``steps`` SGD steps (momentum 0.9, lr 5e-3 in the reference) on the MAE
reconstruction loss of a batch of ``copies`` copies of that image, each with its own random mask,
updating the encoder by default (decoder and classification head frozen; ``TTTSettings.adapt``:
``reference`` adds the mask token, as the reference's "every parameter not named decoder",
``norm`` adapts the encoder's LayerNorms only; ``scale_lr`` takes ``lr`` as the reference's base
rate, x copies / 256); then the prediction of the adapted encoder with every patch visible. The
masks come from explicit noise tensors (:func:`ttt_noise`), seeded per input, so the per-sample
loop here and the batched version (:mod:`tessera.adapt.batched`) see exactly the same masks.
"""

from __future__ import annotations

import torch

from tessera.adapt.heads import TTTClassifier
from tessera.adapt.test_time import TestTimeTrainer, TTTSettings
from tessera.errors import ModelError

_SEED_STRIDE = 1_000_003  # a prime: seeds (seed, index) pairs without collisions in practice


def ttt_noise(seed: int, index: int, steps: int, copies: int, num_patches: int) -> torch.Tensor:
    """The masking noise of input ``index``: (steps, copies, L) uniform, from its own generator."""
    gen = torch.Generator().manual_seed(seed * _SEED_STRIDE + index)
    return torch.rand(steps, copies, num_patches, generator=gen)


def ttt_noise_batch(seed: int, indices: list[int], steps: int, copies: int, num_patches: int) -> torch.Tensor:
    """Noise for several inputs: (B, steps, copies, L), row ``b`` = ``ttt_noise(seed, indices[b])``."""
    return torch.stack([ttt_noise(seed, i, steps, copies, num_patches) for i in indices])


def require_decoder(model: TTTClassifier) -> None:
    """Raise :class:`ModelError` unless the backbone is an MAE with a decoder."""
    if not model.has_decoder:
        raise ModelError(
            f"TTT-MAE needs a masked autoencoder with its decoder, but this classifier's backbone is"
            f" {model.backbone_arch!r} ({type(model.backbone).__name__}), which has none: pretrain with"
            " `pretrain.method: mae` (tessera pretrain), re-run `tessera adapt` on that encoder, or"
            " drop the ttt_mae methods from `evaluate.methods`"
        )


def reconstruction_loss(
    model: TTTClassifier, x: torch.Tensor, noise: torch.Tensor, mask_ratio: float
) -> torch.Tensor:
    """MAE loss of ``copies`` masked copies of ``x`` (1, C, H, W) with ``noise`` (copies, L): scalar."""
    imgs = x.expand(noise.shape[0], -1, -1, -1)  # (copies, C, H, W)
    loss, _, _ = model.backbone(imgs, mask_ratio=mask_ratio, noise=noise.to(x.device))  # noise: CPU-made
    return loss


def ttt_mae_trainer(model: TTTClassifier, settings: TTTSettings) -> TestTimeTrainer:
    """A :class:`TestTimeTrainer` that adapts the encoder on the MAE loss (decoder, heads frozen)."""
    require_decoder(model)
    num_patches = model.encoder.num_patches
    cache: dict[int, torch.Tensor] = {}

    def loss_fn(m: TTTClassifier, x: torch.Tensor, index: int, step: int) -> torch.Tensor:
        if index not in cache:
            cache.clear()
            cache[index] = ttt_noise(settings.seed, index, settings.steps, settings.copies, num_patches)
        return reconstruction_loss(m, x, cache[index][step], settings.mask_ratio)

    return TestTimeTrainer(model, adapted_parameters(model, settings.adapt), loss_fn, settings)


def adapted_parameters(model: TTTClassifier, which: str = "encoder") -> list[torch.nn.Parameter]:
    """The parameters TTT-MAE updates (``TTTSettings.adapt``): the encoder's; the reference's set
    (every backbone parameter not named ``decoder*``: the encoder and the mask token); or the
    encoder's LayerNorm affine parameters."""
    if which == "encoder":
        return list(model.encoder.parameters())
    if which == "reference":
        return [p for n, p in model.backbone.named_parameters() if not n.startswith("decoder")]
    if which == "norm":
        return [
            p for m in model.encoder.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()
        ]
    raise ValueError(f"unknown TTT-MAE parameter set {which!r}")


def ttt_mae_predict(
    model: TTTClassifier, images: torch.Tensor, settings: TTTSettings, start_index: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """TTT-MAE over ``images`` (N, C, H, W): -> probabilities (N, K), losses (N, steps).

    Episodic mode leaves the model unchanged; online mode leaves it adapted to the stream.
    """
    return ttt_mae_trainer(model, settings).run(images, start_index)
