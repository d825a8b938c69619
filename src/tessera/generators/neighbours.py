"""k-nearest-neighbour neighbourhoods in the encoder's embedding space (IC-GAN, Casanova et al. 2021).

IC-GAN models the data as a mixture of neighbourhoods: for each training instance ``i`` the real
samples shown to the discriminator with ``h_i`` are drawn from the ``k`` nearest neighbours of ``i``
by cosine similarity of the embeddings (``k = 50`` in the paper; the instance is its own first
neighbour). The table depends only on the data and the encoder, so it is computed once per
(data version, encoder version) with the core's one :func:`tessera.models.embed.embed` and cached to a
file whose name holds both versions.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tessera.errors import DataError
from tessera.models.embed import embed


def digest_tensor(x: torch.Tensor) -> str:
    """A content hash of a tensor (shape, dtype and bytes): a data version for in-memory images."""
    h = hashlib.sha256(f"{tuple(x.shape)}|{x.dtype}".encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def digest_module(model: nn.Module) -> str:
    """A content hash of a module's state dict: the encoder version."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def knn_indices(emb: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """(N, D) embeddings -> (N, k) indices of each row's k nearest rows by cosine similarity.

    Each row's own index comes first (similarity 1). Computed in row chunks, so memory is O(chunk * N).
    """
    n = emb.shape[0]
    if not 1 <= k <= n:
        raise DataError(f"k = {k} neighbours needs between 1 and {n} (the number of training images)")
    e = F.normalize(emb.float(), dim=1)  # (N, D)
    out = []
    for i in range(0, n, chunk):
        sim = e[i : i + chunk] @ e.T  # (c, N)
        rows = torch.arange(i, min(i + chunk, n))
        sim[torch.arange(rows.numel()), rows] = float("inf")  # the instance itself first
        out.append(sim.topk(k, dim=1).indices)  # (c, k)
    return torch.cat(out)


def neighbourhoods(
    encoder: nn.Module,
    images: torch.Tensor,
    k: int,
    cache_dir: str | Path | None = None,
    data_version: str | None = None,
    encoder_version: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed ``images`` with ``encoder`` and find each one's ``k`` nearest neighbours.

    Args:
        encoder: an MAE, a contrastive model or a bare ViT encoder (anything ``embed`` accepts).
        images: (N, 3, H, W) in [0, 1], at the encoder's input size.
        k: neighbourhood size (the instance included).
        cache_dir: where to keep ``knn-<data>-<encoder>-k<k>.pt``; ``None`` disables the cache.
        data_version, encoder_version: version strings for the cache key; by default content hashes.

    Returns:
        ``emb (N, D)`` float32 embeddings and ``idx (N, k)`` neighbour indices.
    """
    if cache_dir is None:
        emb = embed(encoder, images)  # (N, D)
        return emb, knn_indices(emb, k)
    data_version = data_version or digest_tensor(images)
    encoder_version = encoder_version or digest_module(encoder)
    path = Path(cache_dir) / f"knn-{data_version[:16]}-{encoder_version[:16]}-k{k}.pt"
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached["emb"].shape[0] == images.shape[0] and cached["idx"].shape == (images.shape[0], k):
                return cached["emb"], cached["idx"]
        except (RuntimeError, KeyError, EOFError, ValueError):
            pass  # a corrupt cache is recomputed
    emb = embed(encoder, images)  # (N, D)
    idx = knn_indices(emb, k)  # (N, k)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"emb": emb, "idx": idx, "data_version": data_version, "encoder_version": encoder_version}, tmp
    )
    tmp.replace(path)
    return emb, idx
