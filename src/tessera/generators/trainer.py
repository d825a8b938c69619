"""The IC-GAN training loop, with no I/O (Casanova et al., "Instance-Conditioned GAN", NeurIPS 2021).

Each discriminator step samples conditioning instances ``i`` uniformly, a real image from each one's
k-neighbourhood, and generated images G(z, h_i); D(x, h_i) is trained with the hinge loss on both.
Each generator step minimises ``-D(G(z, h_i), h_i)``; after it, the EMA of G's weights moves. All
randomness comes from one ``torch.Generator`` whose state is checkpointed, so a resumed run repeats
the uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from tessera.generators.icgan import EMA, Discriminator, Generator, d_hinge_loss, g_hinge_loss


@dataclass
class GanState:
    """Everything that changes while training: networks, optimizers, counters, the random stream."""

    generator: Generator
    discriminator: Discriminator
    ema: EMA[Generator]
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    rng: torch.Generator
    step: int = 0
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict training state for a checkpoint's ``extra`` and ``optimizer``."""
        return {
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "ema": self.ema.model.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng": self.rng.get_state(),
            "step": self.step,
            "epoch": self.epoch,
            "history": list(self.history),
        }

    def load(self, d: dict[str, Any]) -> None:
        """Restore from :meth:`to_dict`'s output."""
        self.generator.load_state_dict(d["generator"])
        self.discriminator.load_state_dict(d["discriminator"])
        self.ema.model.load_state_dict(d["ema"])
        self.opt_g.load_state_dict(d["opt_g"])
        self.opt_d.load_state_dict(d["opt_d"])
        self.rng.set_state(d["rng"])
        self.step, self.epoch, self.history = int(d["step"]), int(d["epoch"]), list(d["history"])


def build_state(
    h_dim: int,
    img_size: int,
    *,
    z_dim: int = 64,
    g_ch: int = 64,
    d_ch: int = 64,
    cond_dim: int = 64,
    lr_g: float = 2e-4,
    lr_d: float = 2e-4,
    betas: tuple[float, float] = (0.0, 0.999),
    ema_decay: float = 0.999,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> GanState:
    """Fresh networks (initialised from ``seed``) and Adam optimizers (BigGAN's betas (0, 0.999))."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = Generator(h_dim, img_size, z_dim, g_ch, cond_dim).to(device)
        d = Discriminator(h_dim, img_size, d_ch).to(device)
    return GanState(
        generator=g,
        discriminator=d,
        ema=EMA(g, ema_decay),
        opt_g=torch.optim.Adam(g.parameters(), lr=lr_g, betas=betas),
        opt_d=torch.optim.Adam(d.parameters(), lr=lr_d, betas=betas),
        rng=torch.Generator().manual_seed(seed),
    )


def _batch(
    state: GanState, images: torch.Tensor, bank: torch.Tensor, knn: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> real (B, 3, S, S) from the neighbourhoods, conditioning h (B, D), noise z (B, z_dim)."""
    n, k = knn.shape
    i = torch.randint(n, (batch_size,), generator=state.rng)  # (B,) conditioning instances
    j = knn[i, torch.randint(k, (batch_size,), generator=state.rng)]  # (B,) one neighbour each
    z = torch.randn(batch_size, state.generator.z_dim, generator=state.rng)  # (B, z_dim)
    device = images.device
    return images[j.to(device)], bank[i.to(device)], z.to(device)


def train_epoch(
    state: GanState,
    images: torch.Tensor,
    bank: torch.Tensor,
    knn: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 64,
    d_steps: int = 1,
    progress: bool = True,
) -> dict[str, float]:
    """Run ``steps`` generator steps (each after ``d_steps`` discriminator steps) -> mean losses.

    Args:
        images: (N, 3, S, S) training images in [0, 1] on the training device.
        bank: (N, D) their embeddings (same device); knn: (N, k) neighbour indices (CPU).
    """
    g, d = state.generator.train(), state.discriminator.train()
    sums = {"d_loss": 0.0, "g_loss": 0.0, "d_real": 0.0, "d_fake": 0.0}
    for _ in tqdm(range(steps), desc=f"generator epoch {state.epoch + 1}", disable=not progress, leave=False):
        for _ in range(d_steps):
            real, h, z = _batch(state, images, bank, knn, batch_size)
            with torch.no_grad():
                fake = g(z, h)  # (B, 3, S, S)
            s_real, s_fake = d(real, h), d(fake, h)  # (B,), (B,)
            loss_d = d_hinge_loss(s_real, s_fake)
            state.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            state.opt_d.step()
        _, h, z = _batch(state, images, bank, knn, batch_size)
        loss_g = g_hinge_loss(d(g(z, h), h))
        state.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        state.opt_g.step()
        state.step += 1
        state.ema.update(g, state.step)
        sums["d_loss"] += loss_d.item()
        sums["g_loss"] += loss_g.item()
        sums["d_real"] += s_real.detach().mean().item()
        sums["d_fake"] += s_fake.detach().mean().item()
    state.epoch += 1
    return {key: v / max(steps, 1) for key, v in sums.items()}
