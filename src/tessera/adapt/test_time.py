"""The per-sample test-time-training loop shared by TTT-MAE and rotation TTT.

For each test input: take ``steps`` SGD steps (momentum) on a self-supervised loss of that one input,
then predict it with the adapted model. **Episodic** mode restores the adapted parameters *and the
optimizer state* (momentum buffers) after every input, so each prediction depends on its input only
(Gandelsman et al. 2022, "Test-Time Training with Masked Autoencoders", NeurIPS). **Online** mode
keeps adapting along the stream (Sun et al. 2020, "online" TTT), optionally restoring the initial
state every ``reset_every`` inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from tessera.adapt.heads import TTTClassifier
from tessera.names import TTT_DEFAULTS

# loss(model, x (1, C, H, W), index of the input in its stream, step) -> scalar loss
SSLLoss = Callable[[TTTClassifier, torch.Tensor, int, int], torch.Tensor]
MODES = ("episodic", "online")
# TTT-MAE: which parameters adapt. encoder: the ViT encoder; reference: as yossigandelsman's
# engine_test_time.py, every backbone parameter whose name does not start with "decoder" (the encoder
# and the mask token); norm: the encoder's LayerNorm affine parameters only.
ADAPT_PARAMS = ("encoder", "reference", "norm")


@dataclass(frozen=True)
class TTTSettings:
    """Settings of test-time training (defaults: TTT-MAE, Gandelsman et al. 2022)."""

    steps: int = TTT_DEFAULTS["steps"]  # SGD steps per input
    copies: int = TTT_DEFAULTS["copies"]  # TTT-MAE: copies of the input per step, each its own mask
    lr: float = TTT_DEFAULTS["lr"]  # SGD learning rate
    momentum: float = TTT_DEFAULTS["momentum"]  # SGD momentum
    weight_decay: float = 0.0  # SGD weight decay
    mask_ratio: float = TTT_DEFAULTS["mask_ratio"]  # TTT-MAE: fraction of patches masked in each copy
    mode: str = "episodic"  # episodic (restore after every input) or online (keep adapting)
    reset_every: int = 0  # online: restore the initial weights every N inputs (0 = never)
    seed: int = 0  # seed of the masks (TTT-MAE)
    adapt: str = "encoder"  # TTT-MAE: encoder | reference | norm (ADAPT_PARAMS)
    scale_lr: bool = False  # TTT-MAE: lr is the reference's base lr, used as lr x copies / 256

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"TTT mode must be one of {MODES}, got {self.mode!r}")
        if self.adapt not in ADAPT_PARAMS:
            raise ValueError(f"TTT adapt must be one of {ADAPT_PARAMS}, got {self.adapt!r}")

    @property
    def effective_lr(self) -> float:
        """The SGD learning rate used: ``lr``, or ``lr x copies / 256`` with ``scale_lr``."""
        return self.lr * self.copies / 256 if self.scale_lr else self.lr
        if self.steps < 0 or self.copies < 1 or self.reset_every < 0:
            raise ValueError(f"invalid TTT settings: {self}")


@contextmanager
def only_trainable(model: nn.Module, params: list[nn.Parameter]) -> Iterator[None]:
    """Inside, only ``params`` require gradients (no wasted gradients for the frozen decoder/heads)."""
    keep = {id(p) for p in params}
    frozen = [p for p in model.parameters() if id(p) not in keep and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


class TestTimeTrainer:
    """Adapts ``params`` of ``model`` on ``loss_fn`` input by input (episodic or online)."""

    __test__ = False  # not a pytest class

    def __init__(
        self, model: TTTClassifier, params: list[nn.Parameter], loss_fn: SSLLoss, settings: TTTSettings
    ) -> None:
        self.model, self.params, self.loss_fn, self.settings = model, params, loss_fn, settings
        self.optimizer = torch.optim.SGD(
            params, lr=settings.effective_lr, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
        self._weights0 = [p.detach().clone() for p in params]
        self._opt_state0 = copy.deepcopy(self.optimizer.state_dict())
        self.seen = 0  # inputs since the last reset

    def reset(self) -> None:
        """Restore the initial parameters (bit for bit) and the initial optimizer state."""
        with torch.no_grad():
            for p, p0 in zip(self.params, self._weights0, strict=True):
                p.copy_(p0)
        self.optimizer.load_state_dict(copy.deepcopy(self._opt_state0))
        self.seen = 0

    def adapt(self, x: torch.Tensor, index: int) -> list[float]:
        """Take ``steps`` steps on input ``x`` (1, C, H, W); -> the loss before each step."""
        self.model.eval()  # BatchNorm of the head keeps its statistics; no dropout anywhere
        losses = []
        with only_trainable(self.model, self.params):
            for step in range(self.settings.steps):
                with torch.enable_grad():
                    loss = self.loss_fn(self.model, x, index, step)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                self.optimizer.step()
                losses.append(float(loss.detach()))
        return losses

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(1, C, H, W) -> (K,) class probabilities with the current weights (mask ratio 0)."""
        self.model.eval()
        return self.model(x).softmax(dim=1)[0]

    def run(self, images: torch.Tensor, start_index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapt-then-predict every input of ``images`` (N, C, H, W) in order.

        Returns probabilities (N, K) and the loss before each step (N, steps). Input ``i`` uses
        index ``start_index + i`` (it seeds its masks). Episodic mode leaves the model as it found it.
        """
        probs, losses = [], []
        for i in range(images.shape[0]):
            if (
                self.settings.mode == "online"
                and self.settings.reset_every
                and self.seen >= self.settings.reset_every
            ):
                self.reset()
            x = images[i : i + 1]
            losses.append(self.adapt(x, start_index + i))
            probs.append(self.predict(x))
            self.seen += 1
            if self.settings.mode == "episodic":
                self.reset()
        steps = self.settings.steps
        return (
            torch.stack(probs) if probs else torch.empty(0, self.model.num_classes),
            torch.tensor(losses, dtype=torch.float32).reshape(len(losses), steps),
        )
