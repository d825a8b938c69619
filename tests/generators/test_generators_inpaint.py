"""MAE inpainting/outpainting: visible pixels bit-identical, regions, refusals, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from generators_helpers import ENCODER_ARCH, as_tensor, shapes
from PIL import Image

from tessera import checkpoint
from tessera.errors import DataError, ModelError
from tessera.generators.inpaint import inpaint, patch_mask, region_mask
from tessera.models import registry


def test_region_mask_kinds() -> None:
    box = region_mask(32, 32, box=(4, 8, 12, 10))
    assert int(box.sum()) == 8 * 2 and box[8, 4] and not box[10, 4]
    out = region_mask(32, 32, outpaint=0.5)
    assert int((~out).sum()) == 16 * 16 and not out[16, 16] and out[0, 0]
    m = np.zeros((16, 16), np.uint8)
    m[:8, :8] = 255
    masked = region_mask(32, 32, mask=m)  # resized to the image
    assert int(masked.sum()) == 16 * 16 and masked[0, 0] and not masked[20, 20]
    with pytest.raises(DataError, match="exactly one"):
        region_mask(32, 32)
    with pytest.raises(DataError, match="outside"):
        region_mask(32, 32, box=(0, 0, 40, 8))
    with pytest.raises(DataError, match="empty"):
        region_mask(32, 32, mask=np.zeros((32, 32)))


def test_patch_mask_marks_every_touched_patch() -> None:
    pm = patch_mask(region_mask(32, 32, box=(3, 0, 5, 1)), grid=8)  # straddles patches 0 and 1
    assert pm.nonzero().flatten().tolist() == [0, 1]


@pytest.mark.parametrize("kind", ["box", "mask", "outpaint"])
def test_visible_pixels_are_bit_identical(tiny_mae: torch.nn.Module, kind: str) -> None:
    x = as_tensor(shapes(3))  # (3, 3, 32, 32)
    if kind == "box":
        region = region_mask(32, 32, box=(5, 5, 19, 14))
    elif kind == "mask":
        m = np.zeros((32, 32))
        m[20:, 3:9] = 1.0
        m[2, 30] = 1.0
        region = region_mask(32, 32, mask=m)
    else:
        region = region_mask(32, 32, outpaint=0.5)
    y = inpaint(tiny_mae, x, region)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y[:, :, ~region], x[:, :, ~region])  # bit-identical outside the region
    assert not torch.equal(y[:, :, region], x[:, :, region])  # the region was painted
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_any_image_size_keeps_visible_pixels(tiny_mae: torch.nn.Module) -> None:
    x = torch.rand(3, 50, 70)
    region = region_mask(50, 70, box=(10, 10, 30, 25))
    y = inpaint(tiny_mae, x, region)
    assert y.shape == x.shape and torch.equal(y[:, ~region], x[:, ~region])


def test_fill_is_the_mae_prediction_with_those_patches_masked(tiny_mae: torch.nn.Module) -> None:
    x = as_tensor(shapes(4))
    region = region_mask(32, 32, box=(8, 8, 24, 24))  # 16 of 64 patches
    y = inpaint(tiny_mae, x, region)
    pm = patch_mask(region, 8)
    noise = pm.float().expand(4, -1) + 0.01 * torch.arange(64) / 64  # masked patches sort last
    with torch.no_grad():
        _, pred, mask = tiny_mae(x, mask_ratio=0.25, noise=noise)
    assert torch.equal(mask[0].bool(), pm)
    ref = tiny_mae.unpatchify(pred).clamp(0, 1)
    assert torch.allclose(y[:, :, region], ref[:, :, region], atol=1e-5)


def test_whole_image_region_and_norm_pix_models_are_refused(tiny_mae: torch.nn.Module) -> None:
    x = torch.rand(3, 32, 32)
    with pytest.raises(ModelError, match="every patch"):
        inpaint(tiny_mae, x, torch.ones(32, 32, dtype=torch.bool))
    with pytest.raises(ModelError, match="norm_pix_loss"):
        inpaint(registry.build(ENCODER_ARCH, norm_pix_loss=True), x, region_mask(32, 32, box=(0, 0, 4, 4)))
    with pytest.raises(ModelError, match="needs an MAE"):
        inpaint(torch.nn.Linear(2, 2), x, region_mask(32, 32, box=(0, 0, 4, 4)))


def test_inpaint_cli_writes_before_and_after(encoder_ckpt: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    arr = shapes(1)[0]
    img = tmp_path / "in.png"
    Image.fromarray(arr).save(img)
    res = CliRunner().invoke(
        app,
        [
            "inpaint",
            str(img),
            "--encoder",
            str(encoder_ckpt),
            "--box",
            "4,4,16,20",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 0, res.output
    after = np.asarray(Image.open(tmp_path / "o" / "after.png"))
    before = np.asarray(Image.open(tmp_path / "o" / "before.png"))
    region = np.zeros((32, 32), bool)
    region[4:20, 4:16] = True
    assert np.array_equal(after[~region], arr[~region]) and np.array_equal(before[~region], arr[~region])
    assert (before[region] == 128).all()
    full = CliRunner().invoke(
        app,
        [
            "inpaint",
            str(img),
            "--encoder",
            str(encoder_ckpt),
            "--box",
            "0,0,32,32",
            "--out",
            str(tmp_path / "o4"),
        ],
    )
    assert full.exit_code == 1 and "every patch" in full.output
    from components.inpaint import inpaint_file

    written = inpaint_file(img, encoder_ckpt, tmp_path / "o2", outpaint=True, crop=0.6)
    assert written["after"].is_file()
    with pytest.raises(DataError, match="exactly one"):
        inpaint_file(img, encoder_ckpt, tmp_path / "o3", box="1,1,4,4", outpaint=True)


def test_inpaint_cli_refuses_norm_pix_checkpoint(tmp_path: Path) -> None:
    from components.inpaint import inpaint_file

    cfg = registry.config_of(ENCODER_ARCH, norm_pix_loss=True)
    ck = checkpoint.save(
        checkpoint.make(ENCODER_ARCH, cfg, registry.build(ENCODER_ARCH, **cfg).state_dict()),
        tmp_path / "np.pt",
    )
    Image.fromarray(shapes(1)[0]).save(tmp_path / "in.png")
    with pytest.raises(ModelError, match="raw pixels"):
        inpaint_file(tmp_path / "in.png", ck, tmp_path / "o", box="0,0,8,8")
