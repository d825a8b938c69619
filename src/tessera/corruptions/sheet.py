"""A contact sheet of the corruption suite: one row per corruption, the clean image then severities
1 to 5 (the figure layout of Hendrycks & Dietterich 2019), drawn with PIL so it is deterministic."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tessera.corruptions import corrupt, image_seed

LABEL_W = 130
HEADER_H = 18


def contact_sheet(
    image: np.ndarray,
    corruptions: list[str],
    severities: list[int],
    seed: int,
    index: int = 0,
    cell: int = 64,
) -> np.ndarray:
    """(H, W, 3) uint8 sheet for one ``image`` (upscaled to ``cell`` px, nearest neighbour)."""
    cols = 1 + len(severities)
    pad = 2
    width = LABEL_W + cols * (cell + pad)
    height = HEADER_H + len(corruptions) * (cell + pad)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for j, title in enumerate(["clean"] + [f"severity {s}" for s in severities]):
        draw.text(
            (LABEL_W + j * (cell + pad) + 2, 3), title if cell >= 60 else str(j), fill=(0, 0, 0), font=font
        )

    def tile(x: np.ndarray) -> Image.Image:
        return Image.fromarray(x).resize((cell, cell), Image.Resampling.NEAREST)

    for i, name in enumerate(corruptions):
        y = HEADER_H + i * (cell + pad)
        draw.text((4, y + cell // 2 - 6), name, fill=(0, 0, 0), font=font)
        sheet.paste(tile(image), (LABEL_W, y))
        for j, s in enumerate(severities):
            out = corrupt(image, name, s, image_seed(seed, name, s, index))
            sheet.paste(tile(out), (LABEL_W + (j + 1) * (cell + pad), y))
    return np.asarray(sheet, dtype=np.uint8)
