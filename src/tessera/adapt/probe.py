"""Linear probing (with the rotation head trained jointly) and full fine-tuning of a TTT classifier.

Linear probe as in MAE (He et al. 2022, A.2): the encoder is frozen, so the pooled embeddings are
computed once and the affine-free BatchNorm + linear head is trained on them. The rotation head of
rotation TTT (Sun et al. 2020) is trained at the same time on the embeddings of the four rotations
of every training image. Fine-tuning (He et al. 2022, A.3, without layer-wise decay or mixup at this
size) trains encoder and heads together; with a rotation head the loss is the joint loss of Sun et
al.: classification + rotation prediction on a shared encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from tessera.adapt.heads import TTTClassifier, head_parameters
from tessera.adapt.rotation import rotate_batch
from tessera.models.embed import embed

ROTATION_IMAGES = 1000  # the rotation head trains on the 4 rotations of at most this many images
EpochHook = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings of a probe or fine-tuning run."""

    epochs: int = 30  # passes over the training split
    lr: float = 1e-2  # AdamW learning rate (fine-tuning: of the encoder and heads)
    weight_decay: float = 0.0  # AdamW weight decay
    batch_size: int = 256  # images (or embeddings) per step
    rotation_weight: float = 1.0  # weight of the rotation loss in the joint loss
    seed: int = 0  # shuffling and initialisation


def _train_epochs(
    n: int,
    settings: TrainSettings,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    on_epoch: EpochHook | None,
    name: str,
    desc: str,
) -> None:
    """``settings.epochs`` shuffled passes over ``n`` items: one optimiser step per batch of indices."""
    for epoch in tqdm(range(settings.epochs), desc=desc, leave=False):
        perm = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for i in range(0, n, settings.batch_size):
            idx = perm[i : i + settings.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            loss = batch_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        if on_epoch is not None:
            on_epoch(epoch, {f"{name}/train_loss": total / max(count, 1)})


def train_linear_probe(
    model: TTTClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    on_epoch: EpochHook | None = None,
) -> TTTClassifier:
    """Train ``model.head`` (and ``model.rot_head``) on frozen embeddings of ``images`` (N, C, H, W)."""
    torch.manual_seed(settings.seed)
    feats = embed(model, images)  # (N, D)
    rot_feats = rot_labels = None
    if model.rot_head is not None:
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(settings.seed))
        rotated, rot_labels = rotate_batch(images[keep[:ROTATION_IMAGES]])  # (4n, C, H, W), (4n,)
        rot_feats = embed(model, rotated)  # (4N, D)
    params = head_parameters(model)
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    model.train()
    gen = torch.Generator().manual_seed(settings.seed)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(model.head(feats[idx]), labels[idx])
        if rot_feats is not None and rot_labels is not None and model.rot_head is not None:
            ridx = torch.randint(0, len(rot_feats), (len(idx),), generator=gen)
            loss = loss + settings.rotation_weight * F.cross_entropy(
                model.rot_head(rot_feats[ridx]), rot_labels[ridx]
            )
        return loss

    _train_epochs(len(feats), settings, opt, gen, batch_loss, on_epoch, "probe", "linear probe")
    return model.eval()


def finetune(
    model: TTTClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    on_epoch: EpochHook | None = None,
) -> TTTClassifier:
    """Fine-tune encoder and heads (joint with rotation prediction when there is a rotation head).

    The MAE decoder is left as it is (it takes no part in classification).
    """
    torch.manual_seed(settings.seed)
    params = list(model.encoder.parameters()) + head_parameters(model)
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(settings.seed)
    model.train()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        x = images[idx]  # (b, C, H, W)
        loss = F.cross_entropy(model(x), labels[idx])
        if model.rot_head is not None:
            k = torch.randint(0, 4, (len(idx),), generator=gen)
            xr = torch.stack([torch.rot90(img, int(r), dims=(1, 2)) for img, r in zip(x, k, strict=True)])
            loss = loss + settings.rotation_weight * F.cross_entropy(model.rotation_logits(xr), k)
        return loss

    _train_epochs(len(images), settings, opt, gen, batch_loss, on_epoch, "finetune", "fine-tune")
    return model.eval()


@torch.no_grad()
def predict(model: TTTClassifier, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, C, H, W) -> (N, K) class probabilities of the model as it is (eval mode)."""
    was_training = model.training
    model.eval()
    out = [model(images[i : i + batch_size]).softmax(dim=1) for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, model.num_classes)
