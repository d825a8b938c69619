"""Batched per-request TTT-MAE: adapt many independent inputs at once, each with its own weights.

TTT-MAE (Gandelsman et al. 2022) adapts a copy of the encoder to every test input; the reference does
this one input at a time. Here the B inputs of a batch each get their own copy of the encoder's
parameters, *stacked* along a leading dimension (a ``(D_out, D_in)`` weight becomes
``(B, D_out, D_in)``), and the encoder runs on all of them at once with batched matrix products
(``baddbmm``: input ``b``'s tokens meet input ``b``'s weights only). Attention has no weights, so it
runs as one fused ``scaled_dot_product_attention`` over every copy of every input; the decoder and the
heads are frozen and shared, so they run as the model's own modules on the whole batch.

Because the inputs never mix, the gradient of the *sum* of the per-input losses with respect to the
stacked weights is, slice by slice, each input's own gradient: one ``backward`` gives every input its
exact per-sample gradient, with no ``vmap``. SGD with momentum is applied to the stacked weights
exactly as ``torch.optim.SGD`` would (``_foreach`` ops). The masks come from the same explicit noise
tensors as the per-sample loop (:func:`tessera.adapt.ttt_mae.ttt_noise`), so both paths compute the
same thing; they agree up to floating-point reordering (tested: probabilities within 1e-4 after 5
steps on the micro MAE).

The stacked forward mirrors :class:`tessera.models.vit.ViTEncoder` on timm's ``Block``
(pre-norm, qkv bias, GELU MLP, no layer scale, no q/k norm); :func:`adapt_batch` refuses an encoder
whose blocks differ from that rather than compute something else.

Serving calls :func:`adapt_batch`; episodic by construction (nothing is written to the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tessera.adapt.heads import TTTClassifier
from tessera.adapt.ttt_mae import require_decoder, ttt_noise_batch
from tessera.errors import ModelError
from tessera.models.vit import ViTEncoder
from tessera.names import TTT_DEFAULTS

CPU_CHUNK = 8  # inputs adapted together on the CPU (see adapt_batch)
Weights = dict[str, torch.Tensor]  # encoder parameter name -> (B, *shape), one slice per input


@dataclass
class BatchedTTTResult:
    """What :func:`adapt_batch` returns (B inputs, K classes)."""

    probs_after: torch.Tensor  # (B, K) class probabilities after adaptation (mask ratio 0)
    losses: torch.Tensor  # (B, steps) reconstruction loss before each step (fresh masks each step)
    # with diagnostics=True only (None otherwise: they cost a forward pass each)
    probs_before: torch.Tensor | None = None  # (B, K) class probabilities of the frozen model
    recon_loss_before: torch.Tensor | None = None  # (B,) loss of the frozen model (masks of step 0)
    recon_loss_after: torch.Tensor | None = None  # (B,) loss of the adapted model (the same masks)


# -- the encoder with stacked weights ---------------------------------------------------------
def check_stackable(encoder: ViTEncoder) -> None:
    """Raise :class:`ModelError` unless every block is the plain timm block the stacked forward mirrors."""
    blk: Any
    for i, blk in enumerate(encoder.blocks):
        plain = [
            blk.ls1,
            blk.ls2,
            blk.drop_path1,
            blk.drop_path2,
            blk.attn.q_norm,
            blk.attn.k_norm,
            blk.attn.norm,
            blk.mlp.norm,
        ]
        act = blk.mlp.act
        if not all(isinstance(m, nn.Identity) for m in plain) or not (
            isinstance(act, nn.GELU) and act.approximate == "none"
        ):
            raise ModelError(
                f"batched TTT supports plain ViT blocks only; block {i} of this encoder has"
                " layer scale, q/k norm, drop path or another activation: use the"
                " per-sample loop (`evaluate.batched: false`)"
            )


def _linear(x: torch.Tensor, w: Weights, name: str) -> torch.Tensor:
    """(B, M, D_in) through input ``b``'s own ``name.weight`` (B, D_out, D_in) and ``name.bias``."""
    if x.shape[0] == 1:  # one input: the plain (fused) linear layer, measurably faster than bmm
        # squeeze, not [0]: its backward is a view, where indexing's allocates and copies
        weight, bias = w[f"{name}.weight"].squeeze(0), w[f"{name}.bias"].squeeze(0)
        return F.linear(x.squeeze(0), weight, bias).unsqueeze(0)
    return torch.baddbmm(w[f"{name}.bias"].unsqueeze(1), x, w[f"{name}.weight"].transpose(1, 2))


def _layer_norm(x: torch.Tensor, w: Weights, name: str) -> torch.Tensor:
    """LayerNorm (eps 1e-6) with input ``b``'s own affine parameters; x (B, M, D)."""
    if x.shape[0] == 1:
        return F.layer_norm(
            x, x.shape[-1:], w[f"{name}.weight"].squeeze(0), w[f"{name}.bias"].squeeze(0), eps=1e-6
        )
    x = F.layer_norm(x, x.shape[-1:], eps=1e-6)
    return torch.addcmul(w[f"{name}.bias"].unsqueeze(1), x, w[f"{name}.weight"].unsqueeze(1))


def _block(x: torch.Tensor, w: Weights, i: int, copies: int, heads: int) -> torch.Tensor:
    """One pre-norm transformer block; x (B, copies * T, D), each copy attends within itself."""
    b, m, d = x.shape
    t, hd = m // copies, d // heads
    p = f"blocks.{i}"
    qkv = _linear(_layer_norm(x, w, f"{p}.norm1"), w, f"{p}.attn.qkv")  # (B, copies * T, 3D)
    q, k, v = qkv.reshape(b * copies, t, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
    a = F.scaled_dot_product_attention(q, k, v)  # (B * copies, heads, T, hd)
    x = x + _linear(a.transpose(1, 2).reshape(b, m, d), w, f"{p}.attn.proj")
    h = F.gelu(_linear(_layer_norm(x, w, f"{p}.norm2"), w, f"{p}.mlp.fc1"))
    return x + _linear(h, w, f"{p}.mlp.fc2")


def patch_tokens(encoder: ViTEncoder, w: Weights, images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, D) positioned patch tokens, image ``b`` embedded with its own weights."""
    b, c, h, _ = images.shape
    p, g = encoder.patch_size, encoder.grid_size
    # the patch-embedding convolution (kernel = stride = p) as a matmul on (C, p, p)-flattened patches
    patches = images.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)
    weight = w["patch_embed.proj.weight"].reshape(b, encoder.embed_dim, c * p * p)
    tok = torch.baddbmm(w["patch_embed.proj.bias"].unsqueeze(1), patches, weight.transpose(1, 2))
    return tok + encoder.pos_embed[:, 1:, :]


def encode(encoder: ViTEncoder, w: Weights, tokens: torch.Tensor) -> torch.Tensor:
    """(B, copies, N, D) positioned tokens -> (B * copies, 1 + N, D), as ``ViTEncoder.encode_tokens``."""
    b, copies, n, d = tokens.shape
    cls = w["cls_token"] + encoder.pos_embed[:, :1, :]  # (B, 1, 1, D): cls_token is (1, 1, D) per input
    x = torch.cat([cls.expand(b, copies, 1, d), tokens], dim=2).reshape(b, copies * (1 + n), d)
    first: Any = encoder.blocks[0]
    heads = int(first.attn.num_heads)
    for i in range(len(encoder.blocks)):
        x = _block(x, w, i, copies, heads)
    return _layer_norm(x, w, "norm").reshape(b * copies, 1 + n, d)


# -- TTT-MAE on the stacked weights -------------------------------------------------------------
def _recon_loss(
    model: TTTClassifier, w: Weights, images: torch.Tensor, noise: torch.Tensor, mask_ratio: float
) -> torch.Tensor:
    """Per-input MAE loss (B,) of ``copies`` masked copies each; noise (B, copies, L)."""
    mae: Any = model.backbone  # an MAE (require_decoder checked it)
    encoder = model.encoder
    b, copies, n = noise.shape
    tok = patch_tokens(encoder, w, images)  # (B, L, D): the same for every copy of an input
    tok = tok.unsqueeze(1).expand(b, copies, n, tok.shape[-1]).reshape(b * copies, n, -1)
    visible, mask, ids_restore, _ = mae.random_masking(tok, mask_ratio, noise.reshape(b * copies, n))
    latent = encode(encoder, w, visible.reshape(b, copies, visible.shape[1], -1))
    pred = mae.forward_decoder(latent, ids_restore)  # frozen decoder, shared by every input
    imgs = images.unsqueeze(1).expand(b, copies, *images.shape[1:]).reshape(b * copies, *images.shape[1:])
    return mae.forward_loss(imgs, pred, mask).reshape(b, copies).mean(dim=1)


def _probs(model: TTTClassifier, w: Weights, images: torch.Tensor) -> torch.Tensor:
    """(B, K) class probabilities with every patch visible (mask ratio 0), as ``model(images)``."""
    tokens = encode(model.encoder, w, patch_tokens(model.encoder, w, images).unsqueeze(1))
    return model.classify_tokens(tokens).softmax(dim=1)


def _sgd_step(
    weights: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    lr: float,
    momentum: float,
    weight_decay: float,
) -> list[torch.Tensor]:
    """One step of ``torch.optim.SGD`` (no dampening, no Nesterov) on every tensor; -> the buffers."""
    if weight_decay:
        grads = list(torch._foreach_add(grads, weights, alpha=weight_decay))
    if momentum:
        if not bufs:  # as torch.optim.SGD: the first buffer is the gradient itself
            bufs = [g.clone() for g in grads]
        else:
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads)
        grads = bufs
    torch._foreach_add_(weights, grads, alpha=-lr)
    return bufs


def _adapt_chunk(
    model: TTTClassifier,
    images: torch.Tensor,
    noise: torch.Tensor,
    steps: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    mask_ratio: float,
    diagnostics: bool,
) -> BatchedTTTResult:
    b = images.shape[0]
    w = {
        n: p.detach().unsqueeze(0).repeat(b, *([1] * p.dim())).requires_grad_(True)
        for n, p in model.encoder.named_parameters()
    }
    params = list(w.values())
    with torch.no_grad():
        probs_before = _probs(model, w, images) if diagnostics or not steps else None
    bufs: list[torch.Tensor] = []
    losses = []
    for step in range(steps):
        loss = _recon_loss(model, w, images, noise[:, step], mask_ratio)  # (B,)
        grads = torch.autograd.grad(loss.sum(), params)  # slice b = input b's own gradient
        losses.append(loss.detach())
        with torch.no_grad():
            bufs = _sgd_step(params, list(grads), bufs, lr, momentum, weight_decay)
    hist = torch.stack(losses, dim=1) if losses else torch.empty(b, 0)
    with torch.no_grad():
        probs_after = _probs(model, w, images) if steps else probs_before
        assert probs_after is not None
        if not diagnostics:
            return BatchedTTTResult(probs_after, hist)
        after = _recon_loss(model, w, images, noise[:, 0], mask_ratio)
    before = losses[0] if losses else after  # no step: the weights did not move
    return BatchedTTTResult(probs_after, hist, probs_before, before, after)


def adapt_batch(
    model: TTTClassifier,
    images: torch.Tensor,
    *,
    steps: int = TTT_DEFAULTS["steps"],
    copies: int = TTT_DEFAULTS["copies"],
    lr: float = TTT_DEFAULTS["lr"],
    momentum: float = TTT_DEFAULTS["momentum"],
    weight_decay: float = 0.0,
    mask_ratio: float = TTT_DEFAULTS["mask_ratio"],
    seed: int = 0,
    indices: list[int] | None = None,
    noise: torch.Tensor | None = None,
    chunk_size: int | None = None,
    diagnostics: bool = True,
) -> BatchedTTTResult:
    """Episodic TTT-MAE on every input of a batch at once, each input with its own encoder weights.

    Args:
        model: a TTT classifier whose backbone is an MAE (``ModelError`` otherwise). Not modified.
        images: (B, C, H, W) floats in [0, 1].
        steps, copies, lr, momentum, weight_decay, mask_ratio: as in TTT-MAE (per input: ``steps``
            SGD steps on ``copies`` masked copies).
        seed, indices: the masks of input ``b`` are ``ttt_noise(seed, indices[b], ...)``
            (``indices`` defaults to ``0..B-1``); the per-sample loop with the same seed and index
            uses the same masks.
        noise: explicit masking noise (B, max(steps, 1), copies, L) instead of ``seed``/``indices``.
        chunk_size: inputs adapted together (bounds memory: each holds a copy of the encoder, its
            gradient and its momentum). ``None``: the whole batch on a GPU, chunks of ``CPU_CHUNK``
            on the CPU, where larger chunks measured slower (bench/ttt_throughput.py).
        diagnostics: also return the frozen model's probabilities and the reconstruction loss before
            and after adaptation on the masks of step 0 (two extra forward passes per input).

    Returns:
        A :class:`BatchedTTTResult` with probabilities before/after and the reconstruction losses.
    """
    require_decoder(model)
    check_stackable(model.encoder)
    model.eval()
    with torch.inference_mode(False), torch.enable_grad():
        images = images.detach().clone()  # a normal tensor even if made under inference_mode
        b = images.shape[0]
        num_patches = model.encoder.num_patches
        n_noise = max(steps, 1)
        if noise is None:
            idx = list(range(b)) if indices is None else list(indices)
            noise = ttt_noise_batch(seed, idx, n_noise, copies, num_patches)
        if noise.shape != (b, n_noise, copies, num_patches):
            raise ValueError(
                f"noise must have shape {(b, n_noise, copies, num_patches)}, got {tuple(noise.shape)}"
            )
        noise = noise.to(images.device)
        if chunk_size is None:
            chunk_size = CPU_CHUNK if images.device.type == "cpu" else max(b, 1)
        parts = [
            _adapt_chunk(
                model,
                images[i : i + chunk_size],
                noise[i : i + chunk_size],
                steps,
                lr,
                momentum,
                weight_decay,
                mask_ratio,
                diagnostics,
            )
            for i in range(0, b, chunk_size)
        ]
    if not parts:
        k = model.num_classes
        empty = (torch.empty(0, k), torch.empty(0), torch.empty(0)) if diagnostics else ()
        return BatchedTTTResult(torch.empty(0, k), torch.empty(0, steps), *empty)

    def cat(field: str) -> torch.Tensor | None:
        values = [getattr(p, field) for p in parts]
        return None if values[0] is None else torch.cat(values).detach()

    fields = ("probs_after", "losses", "probs_before", "recon_loss_before", "recon_loss_after")
    return BatchedTTTResult(*(cat(f) for f in fields))  # type: ignore[arg-type]
