"""Classifier recipes with headroom: joint training lowers both the SSL and the classification loss;
the ViT probe trains only its head on the frozen encoder and classifies through the same batched
TTT path; each recipe trains exactly its parameters."""

from __future__ import annotations

import torch
from adapt_helpers import MAE_ARCH, as_tensor, digits_32

from tessera.adapt.batched import adapt_batch
from tessera.adapt.heads import TTTClassifier
from tessera.adapt.recipes import RecipeSettings, augment, train_recipe, warmup_cosine
from tessera.models import registry


def _classifier(trained_mae: torch.nn.Module, head: str = "linear", rotation: bool = True) -> TTTClassifier:
    torch.manual_seed(0)
    model = TTTClassifier(MAE_ARCH, registry.config_of(MAE_ARCH), 10, rotation_head=rotation, head=head)
    model.backbone.load_state_dict(trained_mae.state_dict())
    return model


def test_a_short_joint_run_lowers_both_the_ssl_and_the_classification_loss(trained_mae) -> None:
    x, y = digits_32(12)
    model = _classifier(trained_mae)
    settings = RecipeSettings(
        epochs=8, lr=5e-3, batch_size=30, crop_scale=0.8, label_smoothing=0.0, flip=False
    )
    history = train_recipe(model, as_tensor(x), torch.as_tensor(y), "joint", settings)
    assert history[-1]["ce"] < 0.8 * history[0]["ce"], history
    assert history[-1]["ssl"] < history[0]["ssl"], history  # MAE loss + rotation loss, together
    assert all(p.requires_grad for p in model.parameters())  # left as it found them
    # the head's BatchNorm statistics are those of the trained encoder on the clean images
    from tessera.models.embed import embed

    feats = embed(model, as_tensor(x))
    assert torch.allclose(model.head.bn.running_mean, feats.mean(0), atol=1e-5)
    assert torch.allclose(model.head.bn.running_var, feats.var(0), rtol=1e-4, atol=1e-6)


def test_the_vit_probe_trains_only_its_head_and_serves_through_batched_ttt() -> None:
    # a fresh MAE: the 60-step one's tokens leave the probe on a long plateau (measured: CE 2.30 for
    # ~100 steps before it falls); the mechanics are the point here
    x, y = digits_32(10)
    model = _classifier(registry.build(MAE_ARCH), head="vit", rotation=False)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    settings = RecipeSettings(
        epochs=40, lr=3e-3, batch_size=50, crop_scale=1.0, flip=False
    )  # digits: no flips
    history = train_recipe(model, as_tensor(x), torch.as_tensor(y), "vit_probe", settings)
    assert history[-1]["ce"] < 0.9 * history[0]["ce"] and history[0]["ssl"] == 0.0, history
    assert all(torch.equal(v, before[k]) for k, v in model.backbone.state_dict().items())
    images = as_tensor(digits_32(1, offset=60)[0])[:4]
    with torch.no_grad():
        frozen = model.eval()(images).softmax(1)
    res = adapt_batch(model, images, steps=0, copies=2)
    assert torch.allclose(res.probs_after, frozen, atol=1e-5)  # the ViT probe's path is the model's
    ckpt_cfg = registry.config_of("ttt_mae_classifier")
    assert ckpt_cfg["head"] == "linear"  # old checkpoints (no head key) rebuild with the linear probe


def test_warmup_cosine_and_augment_are_what_they_say() -> None:
    assert [round(warmup_cosine(s, 10, 2), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    x = torch.rand(3, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    out = augment(x, 1.0, g)  # scale 1: the whole image, maybe flipped
    for a, b in zip(out, x, strict=True):
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
    cropped = augment(x, 0.35, torch.Generator().manual_seed(1))
    assert cropped.shape == x.shape and float(cropped.min()) >= 0.0 and float(cropped.max()) <= 1.0
    assert not torch.allclose(cropped, x) and torch.equal(
        cropped, augment(x, 0.35, torch.Generator().manual_seed(1))
    )
