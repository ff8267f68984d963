"""Helpers of the output tests: dciodvfy, and heatmap overlays made the way the worker makes them."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray

LUNG_WINDOW = (-600.0, 1500.0)  # centre, width in HU
CT_MODEL = ("deep-ct-net", "deep-ct-net@0123456789ab")
CXR_MODEL = ("deep-cxr-net", "deep-cxr-net@fedcba987654")


@dataclass(frozen=True)
class Dciodvfy:
    """What dciodvfy said about one file."""

    errors: list[str]
    warnings: list[str]


def dciodvfy(path: Path) -> Dciodvfy:
    """Run dciodvfy on ``path``; print its warnings (allowed) so a reader of the log sees them."""
    result = subprocess.run(["dciodvfy", str(path)], check=False, capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    report = Dciodvfy([line for line in lines if line.startswith("Error")],
                      [line for line in lines if line.startswith("Warning")])
    for line in report.warnings:
        print(f"dciodvfy {path.name}: {line}")
    return report


def gaussian_heatmap(shape: tuple[int, int], centre: tuple[float, float], sigma: float) -> NDArray[np.float32]:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma**2)).astype(np.float32)


def displayed_gray(ds: pydicom.Dataset) -> NDArray[np.float32]:
    """The image as a reader sees it, in [0, 1]: CT in the lung window, radiographs inverted if MONOCHROME1."""
    pixels = ds.pixel_array.astype(np.float32)
    if ds.Modality == "CT":
        hu = pixels * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        centre, width = LUNG_WINDOW
        return np.clip((hu - (centre - width / 2)) / width, 0.0, 1.0)
    lo, hi = np.percentile(pixels, [1, 99])
    gray = np.clip((pixels - lo) / max(hi - lo, 1.0), 0.0, 1.0)
    return 1.0 - gray if ds.PhotometricInterpretation == "MONOCHROME1" else gray


def heatmap_overlay(ds: pydicom.Dataset, alpha: float = 0.45) -> NDArray[np.uint8]:
    """A synthetic Gaussian heatmap, jet-coloured, blended over the displayed image: (H, W, 3) uint8."""
    from matplotlib import colormaps

    gray = displayed_gray(ds)
    h, w = gray.shape
    heat = gaussian_heatmap((h, w), (h * 0.4, w * 0.35), min(h, w) / 8)
    colours = colormaps["jet"](heat)[..., :3]
    a = (alpha * heat)[..., None]
    rgb = (1 - a) * gray[..., None] + a * colours
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
