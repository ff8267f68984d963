"""Burned-in captions: what a Secondary Capture must say on its face, legible in any viewer.

A heatmap travels without its SR: a viewer may show the SC alone, printed, or exported as a picture.
So the score, the model and "NOT FOR DIAGNOSTIC USE" are drawn into the pixels, white on an opaque
dark band across the bottom, in Pillow's built-in font (no font files to ship) scaled to the image.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

BAND_COLOUR = (0, 0, 0)
TEXT_COLOUR = (255, 255, 255)
MIN_FONT_PX = 10
"""Smallest font size used; below it a caption is not legible on a 512-pixel slice."""

_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def _font(size: int) -> _Font:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 ships a fixed-size bitmap font only
        return ImageFont.load_default()


def caption_band_height(height: int, n_lines: int) -> int:
    """Height in pixels of the band :func:`burn_caption` draws for ``n_lines`` on an image ``height`` tall."""
    size = _font_size(height)
    return _line_height(size) * n_lines + size // 2


def _font_size(height: int) -> int:
    return max(MIN_FONT_PX, height // 32)


def _line_height(size: int) -> int:
    return size + max(2, size // 4)


def burn_caption(rgb: NDArray[np.uint8], lines: list[str]) -> NDArray[np.uint8]:
    """Draw ``lines`` in white on a dark band across the bottom of an RGB image.

    Parameters
    ----------
    rgb
        (H, W, 3) uint8 image; not modified.
    lines
        Caption lines, top to bottom. The font shrinks (down to :data:`MIN_FONT_PX`) until the
        longest line fits the width, so nothing is cut off on narrow images.

    Returns
    -------
    numpy.ndarray
        A new (H, W, 3) uint8 image with the caption burned in; pixels above the band are unchanged.

    Raises
    ------
    ValueError
        If ``rgb`` is not (H, W, 3) or the caption band would cover more than half the image.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"caption needs an (H, W, 3) RGB image, got shape {rgb.shape}")
    if not lines:
        return np.array(rgb, dtype=np.uint8, copy=True)
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB")
    width, height = image.size
    band = caption_band_height(height, len(lines))
    if band > height // 2:
        raise ValueError(f"a {len(lines)}-line caption does not fit a {width}x{height} image")
    draw = ImageDraw.Draw(image)
    size = _font_size(height)
    font = _font(size)
    margin = max(2, size // 2)
    while size > MIN_FONT_PX and max(draw.textlength(line, font=font) for line in lines) > width - 2 * margin:
        size -= 1
        font = _font(size)
    draw.rectangle([(0, height - band), (width, height)], fill=BAND_COLOUR)
    top = height - band + size // 4
    for i, line in enumerate(lines):
        draw.text((margin, top + i * _line_height(size)), line, fill=TEXT_COLOUR, font=font)
    return np.asarray(image, dtype=np.uint8).copy()
