"""The one preprocessing used by training and inference alike.

Dialameh et al. (Deep-CT-Net / Deep-CXR-Net) preprocess every image by histogram equalisation,
resizing to 256x256x3, a 3x3 Gaussian blur and standardisation; CT pixels are first windowed
from Hounsfield units. Training calls :func:`preprocess` and then, separately, the random
augmentations of :mod:`engine.augment`; inference calls :func:`preprocess` only. Keeping both on
the same function is what guarantees the model sees at inference what it saw in training.

Only NumPy, Pillow and SciPy are used here (no torch), so workers can preprocess cheaply.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage

__all__ = [
    "DEFAULT_SIZE",
    "LUNG_WINDOW_CENTER",
    "LUNG_WINDOW_WIDTH",
    "equalize_histogram",
    "gaussian_blur_3x3",
    "preprocess",
    "preprocess_batch",
    "resize",
    "standardize",
    "to_uint8",
    "window_hu",
]

#: Side of the square network input, as in the paper (256x256x3).
DEFAULT_SIZE = 256
#: Lung window used for CT (centre and width in HU).
LUNG_WINDOW_CENTER = -600.0
LUNG_WINDOW_WIDTH = 1500.0

# The 3-tap Gaussian that OpenCV's GaussianBlur((3, 3), 0) uses (sigma 0.8 -> [1, 2, 1] / 4).
_GAUSS_3 = np.array([0.25, 0.5, 0.25], dtype=np.float32)


def window_hu(hu: NDArray[np.floating] | NDArray[np.integer], center: float = LUNG_WINDOW_CENTER,
              width: float = LUNG_WINDOW_WIDTH) -> NDArray[np.uint8]:
    """Map Hounsfield units to 8-bit grey through a linear window.

    Parameters
    ----------
    hu
        Pixel values in HU (after the modality LUT).
    center, width
        The window; the default lung window (-600, 1500) keeps parenchyma, ground-glass and
        consolidation distinguishable, which is what the COVID-19 findings live in.

    Returns
    -------
    numpy.ndarray
        uint8 array of the same shape: ``center - width/2`` maps to 0, ``center + width/2`` to 255.
    """
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    lo = center - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - lo) / float(width)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def to_uint8(image: NDArray) -> NDArray[np.uint8]:
    """Return a 2-D uint8 greyscale image.

    uint8 passes through; RGB(A) arrays are reduced to luminance; any other dtype is min-max
    scaled to 0..255 (a constant image becomes all zeros). Histogram equalisation needs 8-bit
    levels, and this is the one place that decides how other inputs get there.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3].astype(np.float32)
        arr = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if np.asarray(image).dtype == np.uint8:
            return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D greyscale image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    f = arr.astype(np.float64)
    finite = np.isfinite(f)
    if not finite.any():
        return np.zeros(arr.shape, dtype=np.uint8)
    lo, hi = float(f[finite].min()), float(f[finite].max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    f = np.where(finite, f, lo)
    return np.clip(np.rint((f - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def equalize_histogram(gray: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Global histogram equalisation of a uint8 image (the same mapping as OpenCV's equalizeHist).

    Equalisation removes much of the scanner- and source-dependent contrast, which matters here
    because the training images come from many papers and hospitals.
    """
    if gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError("equalize_histogram expects a 2-D uint8 image")
    hist = np.bincount(gray.ravel(), minlength=256)
    cdf = np.cumsum(hist)
    nonzero = cdf[hist > 0]
    cdf_min = int(nonzero[0]) if nonzero.size else 0
    total = gray.size
    if total == cdf_min:  # a single grey level: nothing to spread
        return gray.copy()
    lut = np.clip(np.rint((cdf - cdf_min) / (total - cdf_min) * 255.0), 0, 255).astype(np.uint8)
    return lut[gray]


def resize(gray: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """Resize to ``size`` x ``size`` with bilinear interpolation (aspect ratio not kept, as in the paper)."""
    if gray.shape == (size, size):
        return gray
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR))


def gaussian_blur_3x3(image: NDArray[np.floating]) -> NDArray[np.float32]:
    """3x3 Gaussian blur (separable [1, 2, 1]/4, reflected borders); damps resampling noise."""
    f = np.asarray(image, dtype=np.float32)
    f = ndimage.convolve1d(f, _GAUSS_3, axis=0, mode="reflect")
    return ndimage.convolve1d(f, _GAUSS_3, axis=1, mode="reflect")


def standardize(image: NDArray[np.floating], eps: float = 1e-6) -> NDArray[np.float32]:
    """Per-image zero mean, unit variance.

    Per image rather than with data-set statistics so that a single slice arriving from the PACS
    needs nothing but itself.
    """
    f = np.asarray(image, dtype=np.float32)
    return ((f - f.mean()) / (f.std() + eps)).astype(np.float32)


def preprocess(gray: NDArray, size: int = DEFAULT_SIZE, channels: int = 3) -> NDArray[np.float32]:
    """THE preprocessing: equalise, resize, blur, standardise, replicate to 3 channels.

    Parameters
    ----------
    gray
        A greyscale image (uint8, or any numeric dtype which is min-max scaled first; CT should
        already be lung-windowed with :func:`window_hu`). RGB(A) is reduced to luminance.
    size
        Output side in pixels; the model card of each trained model says which size it needs.
    channels
        3 as the networks were trained; 1 for the inference runtimes that fold the replication into
        the stem (:mod:`engine.runtimes.grey`), which then skip the copy.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``(channels, size, size)``.
    """
    g = equalize_histogram(to_uint8(gray))
    g = resize(g, size)
    f = standardize(gaussian_blur_3x3(g))
    return f[None] if channels == 1 else np.repeat(f[None], channels, axis=0)


def preprocess_batch(images: list[NDArray], size: int = DEFAULT_SIZE) -> NDArray[np.float32]:
    """Apply :func:`preprocess` to each image and stack to ``(N, 3, size, size)``."""
    if not images:
        return np.zeros((0, 3, size, size), dtype=np.float32)
    return np.stack([preprocess(im, size) for im in images])
