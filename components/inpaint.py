"""``tessera inpaint``: fill a region of an image with an MAE's prediction (He et al. 2022, no fine-tuning).

``tessera inpaint IMAGE --encoder CKPT (--box x0,y0,x1,y1 | --mask PNG | --outpaint) --out DIR``
writes ``before.png`` (the input with the region greyed out), ``after.png`` (the region filled, every
other pixel identical to the input) and ``mask.png`` (the region in white). The encoder checkpoint
must hold an MAE trained on raw pixels (``norm_pix_loss: false``).
"""

from __future__ import annotations

from pathlib import Path

import typer


def inpaint_file(
    image: Path,
    encoder: Path,
    out: Path,
    box: str | None = None,
    mask: Path | None = None,
    outpaint: bool = False,
    crop: float = 0.5,
) -> dict[str, Path]:
    """Inpaint one image file; returns the written paths (``before``, ``after``, ``mask``)."""
    import numpy as np
    import torch
    from PIL import Image

    from tessera import checkpoint
    from tessera.data.folder import read_rgb
    from tessera.errors import DataError
    from tessera.generators.inpaint import check_raw_pixels, inpaint, region_mask
    from tessera.models.registry import from_checkpoint

    if sum([box is not None, mask is not None, outpaint]) != 1:
        raise DataError("give exactly one of --box x0,y0,x1,y1, --mask PNG or --outpaint")
    mae = from_checkpoint(checkpoint.load(encoder)).eval()
    check_raw_pixels(mae)
    if not Path(image).is_file():
        raise DataError(f"{image} not found")
    try:
        arr = read_rgb(Path(image))  # (H, W, 3) uint8
    except OSError as e:
        raise DataError(f"{image} is not a readable image: {e}") from e
    x = torch.from_numpy(np.array(arr)).permute(2, 0, 1).float() / 255.0  # (3, H, W)
    h, w = arr.shape[:2]
    if box is not None:
        try:
            coords = [int(v) for v in box.split(",")]
        except ValueError as e:
            raise DataError(f"--box takes four integers x0,y0,x1,y1, got {box!r}") from e
        region = region_mask(h, w, box=coords)
    elif mask is not None:
        if not Path(mask).is_file():
            raise DataError(f"mask {mask} not found")
        with Image.open(mask) as m:
            region = region_mask(h, w, mask=np.asarray(m.convert("L")))
    else:
        region = region_mask(h, w, outpaint=crop)
    filled = inpaint(mae, x, region)  # (3, H, W)
    before = torch.where(region[None], torch.full_like(x, 0.5), x)

    def to_png(t: torch.Tensor, path: Path) -> Path:
        a = (t.permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
        Image.fromarray(a).save(path)
        return path

    out.mkdir(parents=True, exist_ok=True)
    written = {"before": to_png(before, out / "before.png"), "after": to_png(filled, out / "after.png")}
    Image.fromarray(region.numpy().astype(np.uint8) * 255).save(out / "mask.png")
    written["mask"] = out / "mask.png"
    return written


def cli(
    image: Path = typer.Argument(..., help="The image to edit (PNG/JPEG; any size)."),
    encoder: Path = typer.Option(..., help="MAE checkpoint trained on raw pixels (encoder.pt)."),
    box: str | None = typer.Option(None, help="Region to fill, x0,y0,x1,y1 in pixels (x1, y1 exclusive)."),
    mask: Path | None = typer.Option(None, help="Mask image: white (> 127) pixels are filled."),
    outpaint: bool = typer.Option(False, "--outpaint", help="Fill everything outside the centre crop."),
    crop: float = typer.Option(0.5, help="With --outpaint: side fraction of the centre crop that is kept."),
    out: Path = typer.Option(Path("runs/inpaint"), help="Output folder for before.png / after.png."),
) -> None:
    """Inpaint (or outpaint) an image with an MAE's decoder; writes before.png and after.png."""
    from tessera.errors import TesseraError

    try:
        written = inpaint_file(image, encoder, out, box=box, mask=mask, outpaint=outpaint, crop=crop)
    except TesseraError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    typer.echo(f"wrote {written['before']} and {written['after']}")


def main(argv: list[str] | None = None) -> None:
    """``python -m components.inpaint IMAGE --encoder CKPT (--box B | --mask M | --outpaint) --out DIR``."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(cli)
    app(args=argv, prog_name="python -m components.inpaint")


if __name__ == "__main__":
    main()
