"""MAE (He et al. 2022): masking, the encoder's visible-only input, the loss on masked patches only,
sin-cos positions, and a loss that falls on tiny data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tessera.models import build, embed
from tessera.models.mae import MaskedAutoencoderViT
from tessera.models.pos_embed import sincos_2d

ARCH = "mae_vit_micro_patch4"


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    # Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP spin contention.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def mae() -> MaskedAutoencoderViT:
    model = build(ARCH)
    assert isinstance(model, MaskedAutoencoderViT)
    return model


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_masking_keeps_int_L_times_one_minus_r_per_sample(ratio: float) -> None:
    b, n, d = 5, 64, 8
    x = torch.randn(b, n, d)
    x_vis, mask, ids_restore, ids_keep = MaskedAutoencoderViT.random_masking(x, ratio)
    keep = int(n * (1 - ratio))
    assert x_vis.shape == (b, keep, d)
    assert torch.equal(mask.sum(dim=1), torch.full((b,), float(n - keep)))
    # the kept tokens are the rows ids_keep of x, and exactly the unmasked positions
    assert torch.equal(x_vis, torch.stack([x[i, ids_keep[i]] for i in range(b)]))
    for i in range(b):
        assert set(ids_keep[i].tolist()) == set(torch.nonzero(mask[i] == 0).flatten().tolist())
    # different samples get different masks
    if ratio > 0:
        assert not all(torch.equal(mask[0], mask[i]) for i in range(1, b))


def test_ids_restore_inverts_the_shuffle() -> None:
    noise = torch.rand(4, 16)
    x = torch.arange(16.0).repeat(4, 1).unsqueeze(-1)  # (4, 16, 1): token i holds value i
    _, mask, ids_restore, _ = MaskedAutoencoderViT.random_masking(x, 0.0, noise)
    ids_shuffle = torch.argsort(noise, dim=1)
    shuffled = torch.gather(x, 1, ids_shuffle.unsqueeze(-1))
    restored = torch.gather(shuffled, 1, ids_restore.unsqueeze(-1))
    assert torch.equal(restored, x)
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(16).repeat(4, 1))
    assert mask.sum() == 0


def test_encoder_receives_only_visible_tokens(mae: MaskedAutoencoderViT) -> None:
    seen: list[tuple[int, ...]] = []
    hook = mae.encoder.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    imgs = torch.rand(3, 3, 32, 32)
    latent, mask, _ = mae.forward_encoder(imgs, 0.75)
    hook.remove()
    keep = int(64 * 0.25)
    assert seen == [(3, 1 + keep, 64)]  # class token + visible patches, no mask tokens
    assert latent.shape == (3, 1 + keep, 64)
    assert mask.shape == (3, 64)
    # the decoder predicts every patch
    ids_restore = mae.random_masking(torch.zeros(3, 64, 1), 0.75)[2]
    assert mae.forward_decoder(latent, ids_restore).shape == (3, 64, 48)


def test_visible_patch_tokens_do_not_depend_on_masked_pixels(mae: MaskedAutoencoderViT) -> None:
    mae.eval()
    imgs = torch.rand(2, 3, 32, 32)
    noise = torch.rand(2, 64)
    latent1, mask, _ = mae.forward_encoder(imgs, 0.75, noise)
    pixel_mask = mae.unpatchify(mask.unsqueeze(-1).expand(-1, -1, 48))  # (B, 3, H, W), 1 = masked
    scrambled = imgs * (1 - pixel_mask) + torch.rand_like(imgs) * pixel_mask
    latent2, _, _ = mae.forward_encoder(scrambled, 0.75, noise)
    assert torch.allclose(latent1, latent2, atol=1e-6)


def test_loss_ignores_visible_patches(mae: MaskedAutoencoderViT) -> None:
    imgs = torch.rand(2, 3, 32, 32)
    noise = torch.rand(2, 64)
    loss, pred, mask = mae(imgs, noise=noise)
    visible = (mask == 0).unsqueeze(-1)
    changed = torch.where(visible, pred + 10.0, pred)
    assert torch.allclose(mae.forward_loss(imgs, changed, mask).mean(), loss)
    changed_masked = torch.where(~visible, pred + 10.0, pred)
    assert mae.forward_loss(imgs, changed_masked, mask).mean() > loss + 50.0
    # and equals the mean squared error over masked patches computed by hand
    per_patch = ((pred - mae.patchify(imgs)) ** 2).mean(-1)
    assert torch.allclose(loss, (per_patch * mask).sum() / mask.sum(), atol=1e-6)


def test_norm_pix_loss_targets_are_per_patch_normalised() -> None:
    model = build(ARCH, norm_pix_loss=True)
    t = model.target(torch.rand(2, 3, 32, 32))  # (B, L, 48)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 64), atol=1e-5)
    assert torch.allclose(t.var(-1), torch.ones(2, 64), atol=1e-3)


def test_patchify_round_trip(mae: MaskedAutoencoderViT) -> None:
    imgs = torch.rand(2, 3, 32, 32)
    patches = mae.patchify(imgs)
    assert patches.shape == (2, 64, 48)
    assert torch.equal(mae.unpatchify(patches), imgs)
    # patch 1 (row 0, column 1) holds pixels [0:4, 4:8], channel last
    assert torch.equal(patches[0, 1].reshape(4, 4, 3), imgs[0, :, 0:4, 4:8].permute(1, 2, 0))


def test_sincos_matches_reference_formula() -> None:
    dim, g = 8, 3
    emb = sincos_2d(dim, g).numpy()
    assert emb.shape == (1 + g * g, dim) and np.all(emb[0] == 0)
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))
    for idx in range(g * g):
        row, col = divmod(idx, g)
        col_part = [np.sin(col * omega), np.cos(col * omega)]  # first half: the column (x) coordinate
        expect = np.concatenate([*col_part, np.sin(row * omega), np.cos(row * omega)])
        assert np.allclose(emb[1 + idx], expect)


def test_loss_falls_on_tiny_data_with_fixed_seed() -> None:
    torch.manual_seed(0)
    model = build(ARCH)
    gen = torch.Generator().manual_seed(0)
    # 16 structured images: colour blocks, learnable from visible context
    imgs = torch.rand(16, 3, 1, 1, generator=gen).expand(-1, -1, 32, 32).clone()
    imgs[:, :, 8:16, :] = 1.0
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = model(imgs)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_embed_works_on_mae(mae: MaskedAutoencoderViT) -> None:
    e = embed(mae, torch.rand(5, 3, 32, 32), batch_size=2)
    assert e.shape == (5, 64) and mae.training
