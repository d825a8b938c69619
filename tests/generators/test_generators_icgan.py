"""IC-GAN networks, the sampling API, the registry bundle and the kNN neighbourhoods."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from generators_helpers import ENCODER_ARCH, as_tensor, shapes

from tessera import checkpoint
from tessera.errors import ModelError
from tessera.generators import ICGAN, Discriminator, Generator, d_hinge_loss, g_hinge_loss
from tessera.generators.neighbours import knn_indices, neighbourhoods
from tessera.generators.sampling import MAX_SAMPLES, generate
from tessera.models import registry


@pytest.mark.parametrize("size", [8, 32])
def test_generator_and_discriminator_shapes_and_range(size: int) -> None:
    g, d = Generator(h_dim=64, img_size=size, z_dim=16, ch=8, cond_dim=8), Discriminator(64, size, ch=8)
    z, h = torch.randn(5, 16), torch.randn(5, 64)
    x = g(z, h)
    assert x.shape == (5, 3, size, size)
    assert x.min() >= 0.0 and x.max() <= 1.0
    s = d(x, h)
    assert s.shape == (5,)
    assert d_hinge_loss(s, s).dim() == 0 and g_hinge_loss(s).dim() == 0
    with pytest.raises(ValueError, match="power of two"):
        Generator(h_dim=64, img_size=24)


def test_discriminator_has_spectral_norm_and_projection() -> None:
    d = Discriminator(h_dim=64, img_size=8, ch=8)
    assert any(n.endswith("weight_orig") for n, _ in d.named_parameters())
    x = torch.rand(2, 3, 8, 8)
    # projection conditioning: the score depends on h
    assert not torch.allclose(d(x, torch.randn(2, 64)), d(x, torch.randn(2, 64)))


def _bundle(tiny_mae: torch.nn.Module, n_bank: int = 12) -> ICGAN:
    torch.manual_seed(3)
    g = Generator(h_dim=64, img_size=32, z_dim=16, ch=8, cond_dim=16)
    with torch.no_grad():  # make the conditioning matter strongly for an untrained G
        for blk in g.blocks:
            for bn in (blk.bn1, blk.bn2):
                bn.gain.weight.normal_(0, 1.0)
                bn.bias.weight.normal_(0, 1.0)
    g.eval()
    bank = torch.randn(n_bank, 64)
    return ICGAN.from_parts(g, tiny_mae, ENCODER_ARCH, registry.config_of(ENCODER_ARCH), bank)


def test_different_instances_give_different_samples_for_the_same_z(tiny_mae: torch.nn.Module) -> None:
    model = _bundle(tiny_mae)
    z = torch.randn(1, 16).expand(4, -1)  # the same noise
    x = generate(model.generator, z, model.bank[:4])
    assert x.shape == (4, 3, 32, 32)
    for i in range(1, 4):
        assert (x[0] - x[i]).abs().mean() > 1e-3
    same = generate(model.generator, z, model.bank[:1].expand(4, -1))
    assert torch.allclose(same[0], same[3])


def test_sample_and_samples_like_are_seeded(tiny_mae: torch.nn.Module) -> None:
    model = _bundle(tiny_mae)
    a, b, c = model.sample(6, seed=1), model.sample(6, seed=1), model.sample(6, seed=2)
    assert a.shape == (6, 3, 32, 32) and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    img = as_tensor(shapes(1))[0]  # (3, 32, 32)
    like = model.samples_like(img, 3, seed=5)
    assert like.shape == (3, 3, 32, 32)
    assert torch.equal(like, model.samples_like(img, 3, seed=5))
    big = torch.nn.functional.interpolate(img[None], size=64)  # another size is resized for the encoder
    assert model.samples_like(big, 2, seed=5).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("n", [0, -3, MAX_SAMPLES + 1])
def test_bad_sample_counts_are_refused(tiny_mae: torch.nn.Module, n: int) -> None:
    model = _bundle(tiny_mae)
    with pytest.raises(ModelError, match="n "):
        model.sample(n)
    with pytest.raises(ModelError, match="n "):
        model.samples_like(torch.rand(3, 32, 32), n)


def test_encoder_with_another_embedding_size_is_refused(tiny_mae: torch.nn.Module) -> None:
    g = Generator(h_dim=48, img_size=32, z_dim=16, ch=8)
    with pytest.raises(ModelError, match="48"):
        ICGAN.from_parts(g, tiny_mae, ENCODER_ARCH, registry.config_of(ENCODER_ARCH), torch.zeros(4, 48))
    with pytest.raises(ModelError, match="embeddings have 192"):
        ICGAN({"h_dim": 64, "img_size": 32}, "mae_vit_tiny_patch4", {}, 4)


def test_bundle_round_trips_through_the_registry(tiny_mae: torch.nn.Module, tmp_path: Path) -> None:
    model = _bundle(tiny_mae)
    path = checkpoint.save(checkpoint.make("icgan", model.config(), model.state_dict()), tmp_path / "g.pt")
    rebuilt = registry.from_checkpoint(checkpoint.load(path, arch="icgan"))
    assert isinstance(rebuilt, ICGAN)
    assert torch.equal(rebuilt.sample(4, seed=9), model.sample(4, seed=9))
    assert torch.equal(rebuilt.bank, model.bank)
    img = torch.rand(3, 32, 32)
    assert torch.equal(rebuilt.embed(img[None]), model.embed(img[None]))


def test_knn_puts_the_instance_first_and_finds_its_cluster() -> None:
    centres = torch.eye(4) * 10
    emb = torch.cat([centres + 0.01 * torch.randn(4, 4) for _ in range(5)])  # 5 copies of 4 clusters
    idx = knn_indices(emb, k=5, chunk=7)
    assert torch.equal(idx[:, 0], torch.arange(20))
    assert torch.equal(idx % 4, (torch.arange(20) % 4)[:, None].expand(-1, 5))


def test_neighbourhoods_are_cached_per_data_and_encoder_version(
    tiny_mae: torch.nn.Module, tmp_path: Path
) -> None:
    images = as_tensor(shapes(20))
    emb, idx = neighbourhoods(tiny_mae, images, 4, cache_dir=tmp_path)
    files = list(tmp_path.glob("knn-*-k4.pt"))
    assert len(files) == 1 and emb.shape == (20, 64) and idx.shape == (20, 4)
    stamp = files[0].stat().st_mtime_ns
    emb2, idx2 = neighbourhoods(tiny_mae, images, 4, cache_dir=tmp_path)
    assert files[0].stat().st_mtime_ns == stamp and torch.equal(idx, idx2)  # read, not recomputed
    other = registry.build(ENCODER_ARCH)
    neighbourhoods(other, images, 4, cache_dir=tmp_path)  # another encoder version
    neighbourhoods(tiny_mae, images[:-1], 4, cache_dir=tmp_path)  # another data version
    assert len(list(tmp_path.glob("knn-*-k4.pt"))) == 3


def test_registry_knows_icgan_without_importing_the_generators(
    tiny_mae: torch.nn.Module, tmp_path: Path
) -> None:
    """Serving and MLflow rebuild a generator.pt through the registry alone (zoo.py imports the bundle)."""
    import subprocess
    import sys

    model = _bundle(tiny_mae)
    path = checkpoint.save(checkpoint.make("icgan", model.config(), model.state_dict()), tmp_path / "g.pt")
    code = (
        "import sys; from tessera import checkpoint; from tessera.models import registry; "
        f"m = registry.from_checkpoint(checkpoint.load({str(path)!r})); "
        "print(type(m).__name__, tuple(m.sample(2).shape))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ICGAN (2, 3, 32, 32)" in res.stdout
