"""Instance-conditioned GAN (Casanova et al., "Instance-Conditioned GAN", NeurIPS 2021).

The networks follow the BigGAN recipe that IC-GAN builds on (Brock et al. 2019), at CPU scale:

* ``Generator`` G(z, h): the instance embedding ``h`` (L2-normalised, as in IC-GAN) is projected by a
  linear layer, concatenated with ``z`` and fed to every residual block through class-conditional
  BatchNorm (a gain and a bias predicted from the conditioning vector; de Vries et al. 2017).
* ``Discriminator`` D(x, h): spectrally normalised residual blocks (Miyato et al. 2018), sum pooling,
  and projection conditioning (Miyato & Koyama 2018): ``D = w·phi(x) + <proj(h), phi(x)>``.
* Hinge loss for both players; an exponential moving average of G's weights is the model kept.

Images are in [0, 1] outside; inside, D sees ``2x - 1`` and G ends in ``(tanh + 1) / 2``.
"""

from __future__ import annotations

import copy
import math
from typing import Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

M = TypeVar("M", bound=nn.Module)


def _n_resamples(img_size: int) -> int:
    """Number of 2x up/down-sampling blocks between 4x4 and ``img_size`` (a power of two >= 8)."""
    n = int(round(math.log2(img_size / 4)))
    if img_size < 8 or 4 * 2**n != img_size:
        raise ValueError(f"img_size must be a power of two >= 8, got {img_size}")
    return n


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without affine parameters, then ``(1 + gain(c)) * x + bias(c)`` per sample."""

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Linear(cond_dim, channels)
        self.bias = nn.Linear(cond_dim, channels)
        for lin in (self.gain, self.bias):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), (B, cond_dim) -> (B, C, H, W)."""
        g = 1.0 + self.gain(c)[:, :, None, None]  # (B, C, 1, 1)
        b = self.bias(c)[:, :, None, None]  # (B, C, 1, 1)
        return self.bn(x) * g + b


class GBlock(nn.Module):
    """BigGAN generator block: CBN-ReLU-up-conv-CBN-ReLU-conv plus an upsampled 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(c_in, cond_dim)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn2 = ConditionalBatchNorm2d(c_out, cond_dim)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, 2H, 2W)."""
        h = F.interpolate(F.relu(self.bn1(x, c)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), c)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Generator(nn.Module):
    """G(z, h) -> images (B, 3, img_size, img_size) in [0, 1]."""

    def __init__(
        self, h_dim: int, img_size: int = 32, z_dim: int = 64, ch: int = 64, cond_dim: int = 64
    ) -> None:
        super().__init__()
        self.h_dim, self.img_size, self.z_dim, self.ch = h_dim, img_size, z_dim, ch
        self.h_proj = nn.Linear(h_dim, cond_dim)
        c = z_dim + cond_dim  # the conditioning vector: [z, proj(h)]
        self.fc = nn.Linear(z_dim, ch * 4 * 4)
        self.blocks = nn.ModuleList([GBlock(ch, ch, c) for _ in range(_n_resamples(img_size))])
        self.out_bn = nn.BatchNorm2d(ch)
        self.out_conv = nn.Conv2d(ch, 3, 3, padding=1)

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """(B, z_dim), (B, h_dim) -> (B, 3, S, S) in [0, 1]."""
        if h.shape[-1] != self.h_dim:
            raise ValueError(f"conditioning has {h.shape[-1]} features, the generator expects {self.h_dim}")
        c = torch.cat([z, self.h_proj(F.normalize(h, dim=-1))], dim=1)  # (B, z_dim + cond_dim)
        x = self.fc(z).view(z.shape[0], self.ch, 4, 4)  # (B, ch, 4, 4)
        for blk in self.blocks:
            x = blk(x, c)  # (B, ch, 2H, 2W)
        x = self.out_conv(F.relu(self.out_bn(x)))  # (B, 3, S, S)
        return (torch.tanh(x) + 1.0) / 2.0


class DBlock(nn.Module):
    """Spectrally normalised discriminator block (pre-activation), optionally downsampling by 2."""

    def __init__(self, c_in: int, c_out: int, down: bool, preactivate: bool = True) -> None:
        super().__init__()
        self.down, self.preactivate = down, preactivate
        self.conv1 = spectral_norm(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.shortcut = spectral_norm(nn.Conv2d(c_in, c_out, 1)) if (c_in != c_out or down) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H/2, W/2) when downsampling."""
        h = F.relu(x) if self.preactivate else x
        h = self.conv2(F.relu(self.conv1(h)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.shortcut is not None:
            s = self.shortcut(s)
            if self.down:
                s = F.avg_pool2d(s, 2)
        return h + s


class Discriminator(nn.Module):
    """D(x, h) -> (B,) real-valued scores, projection-conditioned on the instance embedding h."""

    def __init__(self, h_dim: int, img_size: int = 32, ch: int = 64) -> None:
        super().__init__()
        self.h_dim = h_dim
        n = _n_resamples(img_size)
        blocks = [DBlock(3, ch, down=True, preactivate=False)]
        blocks += [DBlock(ch, ch, down=True) for _ in range(n - 1)]
        blocks += [DBlock(ch, ch, down=False)]
        self.blocks = nn.Sequential(*blocks)
        self.linear = spectral_norm(nn.Linear(ch, 1))
        self.h_proj = spectral_norm(nn.Linear(h_dim, ch))

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1], (B, h_dim) -> (B,)."""
        phi = F.relu(self.blocks(x * 2.0 - 1.0)).sum(dim=(2, 3))  # (B, ch)
        proj = (self.h_proj(F.normalize(h, dim=-1)) * phi).sum(dim=1)  # (B,)
        return self.linear(phi).squeeze(1) + proj


def d_hinge_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator: E[relu(1 - D(real))] + E[relu(1 + D(fake))]."""
    return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()


def g_hinge_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the generator: -E[D(fake)]."""
    return -fake_scores.mean()


class EMA(Generic[M]):
    """Exponential moving average of a module's parameters (buffers, e.g. BN statistics, are copied).

    The decay ramps up as ``min(decay, (1 + step) / (10 + step))`` so short runs are not dominated by
    the random initialisation.
    """

    def __init__(self, model: M, decay: float = 0.999) -> None:
        self.decay = decay
        self.model: M = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average towards ``model``'s current weights."""
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        for avg, cur in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.lerp_(cur.detach(), 1.0 - d)
        for avg_b, cur_b in zip(self.model.buffers(), model.buffers(), strict=True):
            avg_b.copy_(cur_b)
