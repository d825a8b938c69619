"""Weighted k-nearest-neighbour classification on embeddings.

Cosine similarity, the ``k = 20`` nearest training embeddings, each voting for its class with weight
``exp(similarity / T)``: the monitor of Wu et al. 2018 (instance discrimination) and DINO (Caron et
al. 2021). Embeddings come from :func:`tessera.models.embed.embed`, the one embedding of Tessera.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tessera.models.embed import embed


def knn_probs(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """(N, D) bank, (N,) labels, (M, D) queries -> (M, K) class probabilities of the weighted vote."""
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, bank.shape[0])
    out = []
    for i in range(0, queries.shape[0], chunk):
        q = F.normalize(queries[i : i + chunk].float(), dim=1)
        sim = q @ bank.T  # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (m, k)
        weights = (top_sim / temperature).exp()  # (m, k)
        votes = torch.zeros(q.shape[0], num_classes)
        votes.scatter_add_(1, bank_labels[top_idx], weights)  # (m, K)
        out.append(votes / votes.sum(dim=1, keepdim=True))
    return torch.cat(out) if out else torch.empty(0, num_classes)


def knn_bank(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    k: int = 20,
    temperature: float = 0.07,
) -> dict[str, Any]:
    """The kNN 'checkpoint': training embeddings, their labels and the settings (a plain dict)."""
    return {
        "bank": embed(model, images),
        "labels": labels.clone(),
        "classes": list(classes),
        "k": k,
        "temperature": temperature,
    }


def knn_predict(model: nn.Module, bank: dict[str, Any], images: torch.Tensor) -> torch.Tensor:
    """(M, C, H, W) -> (M,) predicted labels with the bank made by :func:`knn_bank`."""
    probs = knn_probs(
        bank["bank"],
        bank["labels"],
        embed(model, images),
        len(bank["classes"]),
        k=bank["k"],
        temperature=bank["temperature"],
    )
    return probs.argmax(dim=1)
