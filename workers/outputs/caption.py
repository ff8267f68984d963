"""Burned-in captions: what an SC image must say on its face, legible in any viewer."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont


def burn_caption(rgb: NDArray[np.uint8], lines: list[str]) -> NDArray[np.uint8]:
    """Draw ``lines`` in white on a dark band across the bottom of ``rgb`` (H, W, 3)."""
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB")
    height = image.height
    size = max(12, height // 40)
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has a fixed-size default font only
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(image)
    line_height = size + max(2, size // 4)
    band = line_height * len(lines) + size // 2
    draw.rectangle([(0, height - band), (image.width, height)], fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((size // 2, height - band + size // 4 + i * line_height), line, fill=(255, 255, 255), font=font)
    return np.asarray(image, dtype=np.uint8).copy()
