"""TTT-MAE: zero steps = frozen, episodic restores, online adapts, batched == loop, loss goes down."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from adapt_helpers import as_tensor, corrupt, digits_32

from tessera.adapt.batched import adapt_batch
from tessera.adapt.heads import TTTClassifier
from tessera.adapt.test_time import TTTSettings
from tessera.adapt.ttt_mae import ttt_mae_predict, ttt_mae_trainer, ttt_noise
from tessera.errors import ModelError
from tessera.models import registry

SMALL = TTTSettings(steps=3, copies=4, lr=5e-3)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_zero_steps_equals_frozen_model_exactly(classifier: TTTClassifier, images: torch.Tensor) -> None:
    with torch.no_grad():
        frozen = torch.cat([classifier(images[i : i + 1]).softmax(1) for i in range(len(images))])
    for mode in ("episodic", "online"):
        probs, losses = ttt_mae_predict(classifier, images, dataclasses.replace(SMALL, steps=0, mode=mode))
        assert torch.equal(probs, frozen)
        assert losses.shape == (len(images), 0)
    res = adapt_batch(classifier, images, steps=0, copies=4)
    torch.testing.assert_close(res.probs_after, res.probs_before, rtol=0, atol=0)
    torch.testing.assert_close(res.probs_before, frozen, rtol=0, atol=1e-5)


def test_episodic_restores_weights_and_optimizer_bit_for_bit(
    classifier: TTTClassifier, images: torch.Tensor
) -> None:
    before = _state(classifier)
    trainer = ttt_mae_trainer(classifier, SMALL)
    probs, losses = trainer.run(images)
    after = classifier.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert trainer.optimizer.state_dict()["state"] == {}  # momentum buffers gone too
    assert losses.shape == (len(images), SMALL.steps)
    # adaptation did happen in between: predictions differ from the frozen model's
    with torch.no_grad():
        frozen = classifier(images).softmax(1)
    assert not torch.allclose(probs, frozen, atol=1e-7)


def test_episodic_predictions_do_not_depend_on_order(classifier: TTTClassifier, images: torch.Tensor) -> None:
    probs, _ = ttt_mae_predict(classifier, images, SMALL)
    single, _ = ttt_mae_predict(classifier, images[3:4], SMALL, start_index=3)
    assert torch.equal(probs[3], single[0])


def test_online_changes_weights_and_reset_policy_restores(
    classifier: TTTClassifier, images: torch.Tensor
) -> None:
    before = _state(classifier)
    trainer = ttt_mae_trainer(classifier, dataclasses.replace(SMALL, mode="online"))
    trainer.run(images)
    enc = [k for k in before if k.startswith("backbone.encoder.")]
    assert any(not torch.equal(before[k], classifier.state_dict()[k]) for k in enc)
    frozen_parts = [k for k in before if not k.startswith("backbone.encoder.")]
    assert all(torch.equal(before[k], classifier.state_dict()[k]) for k in frozen_parts)  # decoder, heads
    assert trainer.optimizer.state_dict()["state"]  # momentum carried along the stream
    trainer.reset()
    assert all(torch.equal(before[k], classifier.state_dict()[k]) for k in before)
    # reset_every=1 makes online equal to episodic (online leaves the model adapted: run it last)
    episodic, _ = ttt_mae_predict(classifier, images, SMALL)
    online1, _ = ttt_mae_predict(classifier, images, dataclasses.replace(SMALL, mode="online", reset_every=1))
    assert torch.equal(online1, episodic)


def test_batched_matches_per_sample_loop(classifier: TTTClassifier, images: torch.Tensor) -> None:
    settings = TTTSettings(steps=5, copies=4, lr=5e-3, seed=7)
    loop_probs, loop_losses = ttt_mae_predict(classifier, images, settings, start_index=10)
    res = adapt_batch(
        classifier, images, steps=5, copies=4, lr=5e-3, seed=7, indices=list(range(10, 10 + len(images)))
    )
    # tolerance stated in docs/adapt.md: probabilities within 1e-4, losses within 1e-4
    torch.testing.assert_close(res.probs_after, loop_probs, rtol=0, atol=1e-4)
    torch.testing.assert_close(res.losses, loop_losses, rtol=0, atol=1e-4)
    assert torch.equal(res.probs_after.argmax(1), loop_probs.argmax(1))
    # explicit noise gives the same result as the seed it was drawn from
    num_patches = classifier.encoder.num_patches
    noise = torch.stack([ttt_noise(7, 10 + i, 5, 4, num_patches) for i in range(len(images))])
    res2 = adapt_batch(classifier, images, steps=5, copies=4, lr=5e-3, noise=noise)
    assert torch.equal(res2.probs_after, res.probs_after)


def test_batched_leaves_model_unchanged_and_works_under_inference_mode(
    classifier: TTTClassifier, images: torch.Tensor
) -> None:
    before = _state(classifier)
    with torch.inference_mode():
        res = adapt_batch(classifier, images, steps=2, copies=2, chunk_size=2)
    assert res.probs_after.shape == (len(images), 10)
    assert res.losses.shape == (len(images), 2)
    assert all(torch.equal(before[k], classifier.state_dict()[k]) for k in before)


def test_ttt_steps_lower_reconstruction_loss_on_corrupted_batch(classifier: TTTClassifier) -> None:
    x, _ = digits_32(1, offset=70)
    noisy = as_tensor(corrupt(x, "gaussian_noise", 3))[:4]
    # the reference lr (5e-3, for ViT-L) barely moves a micro model in 10 steps; 5e-2 does
    res = adapt_batch(classifier, noisy, steps=10, copies=8, lr=5e-2, seed=3)
    assert (res.recon_loss_after < res.recon_loss_before).all()  # same masks before and after
    assert res.losses[:, -3:].mean() < res.losses[:, :3].mean()


def test_ttt_mae_refuses_a_model_without_decoder() -> None:
    cfg = registry.config_of("simclr_vit_micro_patch4")
    model = TTTClassifier("simclr_vit_micro_patch4", cfg, num_classes=10)
    with pytest.raises(ModelError, match="pretrain.method: mae"):
        ttt_mae_trainer(model, SMALL)
    with pytest.raises(ModelError, match="decoder"):
        adapt_batch(model, torch.rand(2, 3, 32, 32), steps=1, copies=2)


def test_batched_without_diagnostics_predicts_the_same(
    classifier: TTTClassifier, images: torch.Tensor
) -> None:
    full = adapt_batch(classifier, images, steps=2, copies=2, seed=1)
    lean = adapt_batch(classifier, images, steps=2, copies=2, seed=1, diagnostics=False)
    assert torch.equal(lean.probs_after, full.probs_after) and torch.equal(lean.losses, full.losses)
    assert lean.probs_before is None and lean.recon_loss_before is None and lean.recon_loss_after is None
    # chunking changes nothing: each input is adapted on its own weights
    chunked = adapt_batch(classifier, images, steps=2, copies=2, seed=1, chunk_size=3, diagnostics=False)
    torch.testing.assert_close(chunked.probs_after, full.probs_after, rtol=0, atol=1e-6)


def test_batched_refuses_blocks_it_does_not_mirror() -> None:
    cfg = registry.config_of("mae_vit_micro_patch4")
    model = TTTClassifier("mae_vit_micro_patch4", cfg, num_classes=10)
    model.encoder.blocks[0].ls1 = torch.nn.Linear(64, 64)  # e.g. a layer-scaled block
    with pytest.raises(ModelError, match="plain ViT blocks"):
        adapt_batch(model, torch.rand(1, 3, 32, 32), steps=1, copies=2)


@pytest.mark.gpu
def test_batched_and_loop_agree_on_cuda(classifier: TTTClassifier, images: torch.Tensor) -> None:
    import copy

    model = copy.deepcopy(classifier).cuda()
    x = images.cuda()
    settings = TTTSettings(steps=3, copies=4, lr=5e-3, seed=2)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # the loop's patch-embedding conv in full fp32, as the matmuls
    try:
        loop_probs, _ = ttt_mae_predict(model, x, settings)
        res = adapt_batch(model, x, steps=3, copies=4, lr=5e-3, seed=2)  # the whole batch at once on a GPU
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert res.probs_after.is_cuda
    torch.testing.assert_close(res.probs_after, loop_probs, rtol=0, atol=1e-4)


def test_ttt_mae_parameter_sets_and_the_reference_learning_rate(classifier) -> None:
    """TTTSettings.adapt picks what TTT-MAE updates (the reference: every backbone parameter not
    named decoder*, so the mask token too); scale_lr uses lr x copies / 256 as the reference does."""
    import torch

    from tessera.adapt.test_time import TTTSettings
    from tessera.adapt.ttt_mae import adapted_parameters, ttt_mae_trainer

    names = {id(p): n for n, p in classifier.named_parameters()}
    ref = {names[id(p)] for p in adapted_parameters(classifier, "reference")}
    assert "backbone.mask_token" in ref and not any(n.startswith("backbone.decoder") for n in ref)
    assert not any(n.startswith(("head.", "rot_head.")) for n in ref)
    norm = adapted_parameters(classifier, "norm")
    assert norm and all(p.ndim == 1 for p in norm)
    assert TTTSettings(lr=1e-2, copies=128, scale_lr=True).effective_lr == pytest.approx(5e-3)
    online = TTTSettings(steps=1, copies=2, lr=1e-2, adapt="norm", scale_lr=True, mode="online")
    trainer = ttt_mae_trainer(classifier, online)  # online: the update stays, to be inspected
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 2 / 256)
    before = {n: p.detach().clone() for n, p in classifier.named_parameters()}
    trainer.run(torch.rand(1, 3, 32, 32), 0)
    changed = {n for n, p in classifier.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".norm" in n or "norm1" in n or "norm2" in n for n in changed), changed
