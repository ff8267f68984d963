"""THE preprocessing of :mod:`engine.preprocess`, in PyTorch, on whole batches, on any device.

:mod:`engine.preprocess` (NumPy, Pillow, SciPy) stays the definition used by training and by CPU
inference. This module computes the same thing with tensors so that, when inference runs on a GPU,
everything after decoding runs there on a whole batch: only the decoded pixels (uint8 grey, or
float32 HU for CT) cross to the device, and the network input never comes back to the host.

Steps and how closely each one follows the NumPy definition (measured on CPU with torch 2.13,
NumPy 2.4, Pillow 13.0, SciPy 1.17, on the 20 real 512x512 axial CT slices of
``dicom/ct-covid19-ny-sbu`` and on real covid-ct PNGs of many shapes; the figures are asserted by
``tests/engine/test_preprocess_torch.py``, on CUDA too where there is a GPU):

* :func:`window_hu_torch` -- identical (the same float32 operations in the same order, rounding
  half to even as :func:`numpy.rint` does; the window bounds are device tensors, because CUDA
  turns a division by a CPU scalar into a multiplication by its reciprocal, which is not
  correctly rounded and could move a .5 boundary).
* :func:`equalize_histogram_torch` -- identical (per-image histograms with one ``scatter_add``,
  the LUT computed in float64 as NumPy computes it, one ``gather``).
* :func:`resize_torch` has two methods:

  - ``"pillow"`` (the default): identical. It is Pillow's algorithm rather than an approximation
    of it: the same triangle-filter coefficients (computed on the host in float64, in Pillow's
    order), the same 22-bit fixed-point weights, the same two passes with the same rounding to
    uint8 between them, in exact int32 arithmetic on the device, and the same order of the passes
    (Pillow 13 resamples vertically first when the height shrinks much more than the width).
    Checked on 1,800 random shapes from 2 to 1,023 px, down- and upscaling.
  - ``"interpolate"``: ``F.interpolate(mode="bilinear", antialias=True, align_corners=False)`` in
    float32, then round and clamp. It keeps the intermediate in float where Pillow rounds to uint8
    between its passes, and uses float weights where Pillow uses fixed point, so it is one grey
    level off at many pixels: 512 -> 256 on the CT slices, 12.9 % of pixels differ (9.9 % at 224,
    5.4 % at 64), never by more than 1. Through the whole pipeline that is a max abs difference of
    0.0105 (CT) / 0.0125 (PNG) and a mean of 0.0013 / 0.0015 in standardised units, and
    Deep-CT-Net's probability moves by up to 0.0011 / 0.0016. Kept for comparison only.
* :func:`gaussian_blur_3x3_torch` -- identical on resized uint8 images (every value is an exact
  multiple of 1/16, so no order of additions can round); one pixel of replicate padding is SciPy's
  ``mode="reflect"`` for a kernel of radius one.
* :func:`standardize_torch` -- mean and population standard deviation accumulated in float64
  (NumPy accumulates float32 in float32), so the two agree to float32 rounding.

Stated tolerance of the full pipeline (:func:`preprocess_batch_torch` and
:func:`preprocess_hu_batch_torch` against :func:`engine.preprocess.preprocess`, default
``"pillow"`` resize, size 256), in standardised units: **max abs difference <= 1e-5, mean abs
difference <= 1e-6** (measured: max 2.4e-7, mean 2.7e-8 on the CT slices; 2.4e-7 and 2.3e-8 on the
PNGs). Deep-CT-Net's probability (committed weights) on the two inputs: **difference <= 1e-5**
(measured 1.2e-7).

Speed on this machine's CPU (2 cores shared with other work; torch 2.13 CPU build; a batch of 32
real 512x512 CT slices -- the 20 slices cycled -- to 256, best of 7;
``python -m engine.preprocess_torch --device cpu [--threads N]``), per slice:

* NumPy :func:`engine.preprocess.preprocess`: 1.9-2.0 ms (2.2-2.8 ms with
  :func:`engine.preprocess.window_hu` first);
* :func:`preprocess_batch_torch`: 2.5-2.7 ms with 1 thread; 1.6 ms with 2 threads while the cores
  are otherwise idle, but 6 ms when other processes compete for them (OpenMP threads wait on
  each other);
* :func:`preprocess_hu_batch_torch`: 3.0-3.5 ms with 1 thread; 1.7 ms with 2 idle cores, 10-14 ms
  with busy ones.

So on a CPU this module buys nothing (CPU workers keep :mod:`engine.preprocess`); it exists so that
a GPU worker sends only decoded pixels to the device. Its GPU time is still to be measured
(``python -m engine.preprocess_torch --device cuda``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from engine.preprocess import DEFAULT_SIZE, LUNG_WINDOW_CENTER, LUNG_WINDOW_WIDTH, to_uint8

__all__ = [
    "CPU_CHUNK",
    "PILLOW_PRECISION_BITS",
    "ResizeMethod",
    "compare_with_numpy",
    "equalize_histogram_torch",
    "gaussian_blur_3x3_torch",
    "preprocess_batch_torch",
    "preprocess_hu_batch_torch",
    "resize_torch",
    "standardize_torch",
    "window_hu_torch",
]

#: Pillow's fixed-point precision for 8-bit resampling (``32 - 8 - 2`` in ``Resample.c``).
PILLOW_PRECISION_BITS = 22

ResizeMethod = Literal["pillow", "interpolate"]

#: On the CPU a batch is worked through this many images at a time, so that the intermediates stay
#: in cache (a whole batch of 512x512 slices does not; on a GPU the whole batch goes at once).
CPU_CHUNK = 4

DeviceLike = torch.device | str | None


# --------------------------------------------------------------------------------------------- steps
def window_hu_torch(hu: torch.Tensor, center: float = LUNG_WINDOW_CENTER,
                    width: float = LUNG_WINDOW_WIDTH) -> torch.Tensor:
    """:func:`engine.preprocess.window_hu` on a tensor of any shape: HU -> uint8 through a window.

    Computed as NumPy does: ``rint((float32(hu) - lo) / width * 255)`` in float32, clipped to
    0..255, with round half to even. Identical to the NumPy result on every device.
    """
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    f = hu.to(torch.float32)
    # 0-dim tensors on the device, not Python scalars: CUDA turns a division by a CPU scalar into a
    # multiplication by its reciprocal, which is not correctly rounded and can move a .5 boundary.
    lo = torch.tensor(center - width / 2.0, dtype=torch.float32, device=f.device)
    w = torch.tensor(width, dtype=torch.float32, device=f.device)
    scaled = (f - lo) / w
    return torch.round(scaled * 255.0).clamp_(0, 255).to(torch.uint8)


def _check_batch_u8(x: torch.Tensor, name: str) -> None:
    if x.dtype != torch.uint8 or x.ndim != 3:
        raise ValueError(f"{name} expects a uint8 tensor of shape (N, H, W), got {tuple(x.shape)} {x.dtype}")


def equalize_histogram_torch(gray_u8: torch.Tensor) -> torch.Tensor:
    """:func:`engine.preprocess.equalize_histogram` on a batch ``(N, H, W)`` uint8, image by image.

    One ``scatter_add`` builds all N histograms, the cumulative sums give one LUT per image (in
    float64, as NumPy computes it) and one ``gather`` applies them. An image with a single grey
    level is returned unchanged, as in NumPy.
    """
    _check_batch_u8(gray_u8, "equalize_histogram_torch")
    n, h, w = gray_u8.shape
    if n == 0 or h * w == 0:
        return gray_u8.clone()
    dev = gray_u8.device
    flat = gray_u8.reshape(n, h * w).to(torch.int64)
    hist = torch.zeros((n, 256), dtype=torch.int64, device=dev)
    hist.scatter_add_(1, flat, torch.ones((1, 1), dtype=torch.int64, device=dev).expand(n, h * w))
    cdf = hist.cumsum(1)
    big = torch.iinfo(torch.int64).max
    cdf_min = torch.where(hist > 0, cdf, torch.full_like(cdf, big)).amin(1, keepdim=True)
    total = h * w
    denom = (total - cdf_min).to(torch.float64)
    single = denom == 0
    lut = torch.round((cdf - cdf_min).to(torch.float64) / torch.where(single, 1.0, denom) * 255.0)
    lut = lut.clamp_(0, 255).to(torch.uint8)
    identity = torch.arange(256, dtype=torch.uint8, device=dev).expand(n, 256)
    lut = torch.where(single, identity, lut)
    return torch.gather(lut, 1, flat).reshape(n, h, w)


@lru_cache(maxsize=64)
def _pillow_coeffs(in_size: int, out_size: int) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for the BILINEAR filter.

    Returns (xmin per output, fixed-point weights per output padded with zeros to ksize). Python
    floats are C doubles and the operations are in Pillow's order, so the weights are Pillow's.
    """
    support_1 = 1.0  # the triangle filter's support
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = support_1 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    xmins: list[int] = []
    weights: list[tuple[int, ...]] = []
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k: list[float] = []
        ww = 0.0
        for x in range(xmax):
            t = abs((x + xmin - center + 0.5) * ss)
            wt = 1.0 - t if t < 1.0 else 0.0
            k.append(wt)
            ww += wt
        if ww != 0.0:
            k = [v / ww for v in k]
        one = 1 << PILLOW_PRECISION_BITS
        fixed = [int(-0.5 + v * one) if v < 0 else int(0.5 + v * one) for v in k]
        fixed += [0] * (ksize - len(fixed))
        xmins.append(xmin)
        weights.append(tuple(fixed))
    return tuple(xmins), tuple(weights)


def _pillow_pass(x: torch.Tensor, out_size: int) -> torch.Tensor:
    """One Pillow resampling pass along the FIRST axis of a uint8 tensor; uint8 out, as Pillow.

    Along the first axis every tap is a gather of whole contiguous rows, which is what makes this
    fast on both CPU and GPU; the sums are exact in int32 (at most 2**21 + 255 * 2**22 < 2**31).
    """
    in_size = x.shape[0]
    xmins, weights = _pillow_coeffs(in_size, out_size)
    dev = x.device
    xmin = torch.tensor(xmins, dtype=torch.int64, device=dev)
    kk = torch.tensor(weights, dtype=torch.int32, device=dev)  # (out, ksize)
    kk = kk.reshape(out_size, kk.shape[1], *([1] * (x.ndim - 1)))
    acc = torch.full((out_size, *x.shape[1:]), 1 << (PILLOW_PRECISION_BITS - 1), dtype=torch.int32, device=dev)
    for t in range(kk.shape[1]):
        idx = (xmin + t).clamp_(max=in_size - 1)  # taps past the bound carry weight 0
        acc.addcmul_(x.index_select(0, idx), kk[:, t])
    # clip8: >= 256 << 22 -> 255, <= 0 -> 0, else >> 22 (the sum is never negative: no negative weights)
    return torch.bitwise_right_shift(acc.clamp_(min=0), PILLOW_PRECISION_BITS).clamp_(max=255).to(torch.uint8)


def resize_torch(u8: torch.Tensor, size: int, method: ResizeMethod = "pillow") -> torch.Tensor:
    """:func:`engine.preprocess.resize` on a batch: ``(N, H, W)`` uint8 -> ``(N, size, size)`` uint8.

    Parameters
    ----------
    u8
        uint8 images of one shape.
    size
        Output side.
    method
        ``"pillow"``: Pillow's BILINEAR resampling reproduced exactly (antialiased triangle filter,
        22-bit fixed-point weights, two passes in Pillow's order with uint8 in between), in int32
        on the device. ``"interpolate"``: ``F.interpolate(bilinear, antialias=True)`` in float32,
        rounded; one grey level off at about 13 % of pixels for 512 -> 256 (see the module
        docstring).
    """
    _check_batch_u8(u8, "resize_torch")
    n, h, w = u8.shape
    if (h, w) == (size, size) or n == 0:
        return u8
    if method == "interpolate":
        f = F.interpolate(u8[:, None].to(torch.float32), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False)[:, 0]
        return torch.round(f).clamp_(0, 255).to(torch.uint8)
    if method != "pillow":
        raise ValueError(f"unknown resize method {method!r}: 'pillow' or 'interpolate'")
    # Work with the axis being resampled first: (N, H, W) -> (H, N, W) or (W, N, H).
    x = u8.permute(1, 0, 2).contiguous()  # (H, N, W)
    first = "y"
    for axis in _pillow_pass_order(h, w, size):
        if axis != first:
            x = x.permute(2, 1, 0).contiguous()  # swap the leading and trailing image axes
            first = axis
        x = _pillow_pass(x, size)
    x = x.permute(1, 0, 2) if first == "y" else x.permute(1, 2, 0)  # back to (N, H, W)
    return x.contiguous()


def _pillow_pass_order(h: int, w: int, size: int) -> tuple[str, ...]:
    """The passes Pillow makes for (h, w) -> (size, size), in its order.

    A pass is skipped where that side does not change. Pillow resamples horizontally first, except
    (Pillow 13, python-pillow/Pillow#9549) when the height shrinks much more than the width; the
    condition below was measured against Pillow 13 on every shape up to 300 px per side for a
    64 px output, and ``tests/engine/test_preprocess_torch.py`` keeps checking it.
    """
    need_x, need_y = w != size, h != size
    if need_x and need_y and h > size and (h - size) > 2 * (w - size):
        return ("y", "x")
    return tuple(a for a, need in (("x", need_x), ("y", need_y)) if need)


def gaussian_blur_3x3_torch(images: torch.Tensor) -> torch.Tensor:
    """:func:`engine.preprocess.gaussian_blur_3x3` on ``(N, H, W)`` (or ``(N, 1, H, W)``): float32.

    Separable [1, 2, 1]/4 with the border pixel repeated, which is SciPy's ``mode="reflect"`` for a
    kernel of radius one.
    """
    squeeze = images.ndim == 3
    x = images.to(torch.float32)
    x = x[:, None] if squeeze else x
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"gaussian_blur_3x3_torch expects (N, H, W) or (N, 1, H, W), got {tuple(images.shape)}")
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    v = 0.25 * p[:, :, :-2] + 0.5 * p[:, :, 1:-1] + 0.25 * p[:, :, 2:]  # axis 0 (rows) first, as in NumPy
    out = 0.25 * v[..., :-2] + 0.5 * v[..., 1:-1] + 0.25 * v[..., 2:]
    return out[:, 0] if squeeze else out


def standardize_torch(images: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """:func:`engine.preprocess.standardize` per image of a batch (first axis): zero mean, unit
    (population) standard deviation, ``(x - mean) / (std + eps)``, float32.

    The statistics are accumulated in float64, which NumPy does not; the two agree to float32
    rounding.
    """
    if images.ndim < 2:
        raise ValueError("standardize_torch expects a batch: the first axis indexes images")
    x = images.to(torch.float64)
    dims = tuple(range(1, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    std = (x - mean).square().mean(dim=dims, keepdim=True).sqrt()
    return ((x - mean) / (std + eps)).to(torch.float32)


# ------------------------------------------------------------------------------------------ pipeline
def _device(device: DeviceLike) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _groups(shapes: Sequence[tuple[int, ...]]) -> dict[tuple[int, ...], list[int]]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(shapes):
        groups.setdefault(tuple(s), []).append(i)
    return groups


def _to_device(arrays: list[NDArray], dev: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))
    if dev.type == "cuda":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


def _equalize_resize(u8: torch.Tensor, size: int, method: ResizeMethod) -> torch.Tensor:
    return resize_torch(equalize_histogram_torch(u8), size, method)


def _finish(resized: torch.Tensor, channels: int) -> torch.Tensor:
    out = standardize_torch(gaussian_blur_3x3_torch(resized))[:, None]
    if channels == 1:
        return out
    return out.expand(-1, channels, -1, -1).contiguous()


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")


def preprocess_batch_torch(images: Sequence[NDArray] | torch.Tensor, size: int = DEFAULT_SIZE,
                           device: DeviceLike = None, *, method: ResizeMethod = "pillow",
                           channels: int = 1) -> torch.Tensor:
    """THE preprocessing (:func:`engine.preprocess.preprocess`) of a batch, on ``device``.

    Parameters
    ----------
    images
        2-D greyscale images (uint8; any other dtype or RGB(A) goes through
        :func:`engine.preprocess.to_uint8` on the host first, as in NumPy), or a uint8 tensor
        ``(N, H, W)`` (on any device; it is moved to ``device``). Images of different shapes are
        grouped by shape; equalisation and resizing run once per group, blur and standardisation
        once for the whole batch.
    size
        Output side.
    device
        Where to compute (default: CUDA if available, else CPU).
    method
        Resize method, see :func:`resize_torch`; ``"pillow"`` reproduces Pillow exactly.
    channels
        1 (the default) or 3 (grey replicated, as :func:`engine.preprocess.preprocess` returns).

    Returns
    -------
    torch.Tensor
        float32 ``(N, channels, size, size)`` on ``device``, in input order.
    """
    _check_channels(channels)
    dev = _device(device)
    if dev.type == "cpu" and len(images) > CPU_CHUNK:
        return torch.cat([preprocess_batch_torch(images[i:i + CPU_CHUNK], size, dev, method=method, channels=channels)
                          for i in range(0, len(images), CPU_CHUNK)])
    if isinstance(images, torch.Tensor):
        _check_batch_u8(images, "preprocess_batch_torch")
        if images.shape[0] == 0:
            return torch.zeros((0, channels, size, size), dtype=torch.float32, device=dev)
        return _finish(_equalize_resize(images.to(dev), size, method), channels)
    grays = [to_uint8(np.asarray(im)) for im in images]
    if not grays:
        return torch.zeros((0, channels, size, size), dtype=torch.float32, device=dev)
    resized = torch.empty((len(grays), size, size), dtype=torch.uint8, device=dev)
    for idx in _groups([g.shape for g in grays]).values():
        batch = _to_device([grays[i] for i in idx], dev)
        resized[torch.tensor(idx, device=dev)] = _equalize_resize(batch, size, method)
    return _finish(resized, channels)


def preprocess_hu_batch_torch(hu: Sequence[NDArray] | torch.Tensor, size: int = DEFAULT_SIZE,
                              device: DeviceLike = None, *, center: float = LUNG_WINDOW_CENTER,
                              width: float = LUNG_WINDOW_WIDTH, method: ResizeMethod = "pillow",
                              channels: int = 1) -> torch.Tensor:
    """The CT path: HU (from :func:`engine.imageio.dataset_to_hu`) -> network input, all on ``device``.

    Equal to ``preprocess(window_hu(hu, center, width), size)`` per slice (see the module docstring
    for the tolerance). Slices of different shapes are grouped by shape.

    Parameters
    ----------
    hu
        2-D arrays of Hounsfield units (float32 or any real dtype), or a tensor ``(N, H, W)``.
    size, device, method, channels
        As in :func:`preprocess_batch_torch`.
    center, width
        The window (default: the lung window).
    """
    _check_channels(channels)
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    dev = _device(device)
    if dev.type == "cpu" and len(hu) > CPU_CHUNK:
        return torch.cat([preprocess_hu_batch_torch(hu[i:i + CPU_CHUNK], size, dev, center=center, width=width,
                                                    method=method, channels=channels)
                          for i in range(0, len(hu), CPU_CHUNK)])
    if isinstance(hu, torch.Tensor):
        if hu.ndim != 3:
            raise ValueError(f"preprocess_hu_batch_torch expects (N, H, W), got {tuple(hu.shape)}")
        if hu.shape[0] == 0:
            return torch.zeros((0, channels, size, size), dtype=torch.float32, device=dev)
        u8 = window_hu_torch(hu.to(dev), center, width)
        return _finish(_equalize_resize(u8, size, method), channels)
    arrays = [np.asarray(a) for a in hu]
    for a in arrays:
        if a.ndim != 2:
            raise ValueError(f"preprocess_hu_batch_torch expects 2-D slices, got shape {a.shape}")
    if not arrays:
        return torch.zeros((0, channels, size, size), dtype=torch.float32, device=dev)
    resized = torch.empty((len(arrays), size, size), dtype=torch.uint8, device=dev)
    for idx in _groups([a.shape for a in arrays]).values():
        batch = _to_device([arrays[i] for i in idx], dev)
        u8 = window_hu_torch(batch, center, width)
        resized[torch.tensor(idx, device=dev)] = _equalize_resize(u8, size, method)
    return _finish(resized, channels)


# ---------------------------------------------------------------------------------------- comparison
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def compare_with_numpy(images: Sequence[NDArray], size: int = DEFAULT_SIZE, device: DeviceLike = None, *,
                       hu: bool = False, method: ResizeMethod = "pillow", repeats: int = 3) -> dict[str, Any]:
    """Run NumPy's :func:`engine.preprocess.preprocess` and this module on the same images.

    Parameters
    ----------
    images
        Greyscale images, or HU slices when ``hu`` is true (then NumPy windows with
        :func:`engine.preprocess.window_hu` first and the torch side uses
        :func:`preprocess_hu_batch_torch`).
    repeats
        Timed repetitions; the best is reported (after one untimed warm-up of the torch side).

    Returns
    -------
    dict
        ``max_abs`` and ``mean_abs`` difference in standardised units, ``numpy_ms_per_image``,
        ``torch_ms_per_image`` (host -> device transfer and a final synchronisation included),
        ``n``, ``size``, ``device``, ``method``, ``threads``.
    """
    from engine.preprocess import preprocess, window_hu

    dev = _device(device)
    imgs = list(images)

    def numpy_side() -> NDArray[np.float32]:
        return np.stack([preprocess(window_hu(a) if hu else a, size)[0] for a in imgs])

    def torch_side() -> torch.Tensor:
        fn = preprocess_hu_batch_torch if hu else preprocess_batch_torch
        out = fn(imgs, size, dev, method=method)
        _sync(dev)
        return out

    def best(fn: Any) -> tuple[Any, float]:
        times, out = [], None
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return out, min(times)

    with torch.inference_mode():
        torch_side()  # warm-up (CUDA context, kernels, coefficient cache)
        ref, t_np = best(numpy_side)
        got, t_t = best(torch_side)
    diff = np.abs(got[:, 0].cpu().numpy() - ref)
    n = max(len(imgs), 1)
    return {"n": len(imgs), "size": size, "device": str(dev), "method": method,
            "threads": torch.get_num_threads(),
            "max_abs": float(diff.max()) if diff.size else 0.0,
            "mean_abs": float(diff.mean()) if diff.size else 0.0,
            "numpy_ms_per_image": 1000.0 * t_np / n, "torch_ms_per_image": 1000.0 * t_t / n}


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m engine.preprocess_torch [--device cuda] [--n 32]``: accuracy and speed on real CT."""
    import argparse
    import json

    from engine.data import shared_data_dir
    from engine.imageio import dataset_to_hu

    ap = argparse.ArgumentParser(description=_main.__doc__)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--n", type=int, default=32, help="batch size (the real slices are cycled to fill it)")
    ap.add_argument("--size", type=int, default=DEFAULT_SIZE)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import pydicom

    files = sorted((shared_data_dir() / "dicom" / "ct-covid19-ny-sbu").glob("*/axial/*.dcm"))
    if not files:
        raise SystemExit(f"no CT slices under {shared_data_dir() / 'dicom' / 'ct-covid19-ny-sbu'}")
    hus = [dataset_to_hu(pydicom.dcmread(f)) for f in files]
    batch = [hus[i % len(hus)] for i in range(args.n)]
    from engine.preprocess import window_hu

    grays = [window_hu(h) for h in batch]
    for label, imgs, is_hu in (("gray", grays, False), ("hu", batch, True)):
        for method in ("pillow", "interpolate"):
            r = compare_with_numpy(imgs, args.size, args.device, hu=is_hu, method=method, repeats=args.repeats)
            print(json.dumps({"input": label, **r}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
