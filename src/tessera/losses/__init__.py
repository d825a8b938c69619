"""Losses of the self-supervised methods: NT-Xent (SimCLR) and the BYOL regression loss."""

from tessera.losses.byol import byol_loss
from tessera.losses.ntxent import NTXentLoss

__all__ = ["NTXentLoss", "byol_loss"]
