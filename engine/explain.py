"""Explanation heatmaps and the overlay the workers burn into Secondary Capture images.

Every map is a float32 array in [0, 1] with the shape of the greyscale input image:

* :func:`grad_cam` / :func:`grad_cam_plus_plus`: gradient-weighted activations of the network's
  last attention block (``model.explain_layer``: Deep-CT-Net's FPA+BN output, Deep-CXR-Net's
  COVID part, CT-Net's third attention stage), target = the COVID logit.
* :func:`attention_map`: CT-Net's soft masks M(x) (channel mean), no gradients needed.
* :func:`occlusion_map`: drop of the COVID probability when an N x N patch (in network-input
  pixels) is set to the image mean, stride S; model-agnostic and slow (one forward per position).

Grad-CAM and the attention maps read what a forward pass leaves on the shared network (hooks on
its layer, the soft masks its modules keep, the gradients of its parameters), so each holds that
network's lock for its pass: the GPU worker's threads explain several studies at once with one
model, and without the lock two passes crossed (a map computed from another study's slice) or
crashed the process (a segmentation fault in concurrent backward passes, reproduced by
``tests/engine/test_explain.py``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = [
    "METHODS",
    "attention_map",
    "explain_image",
    "grad_cam",
    "grad_cam_plus_plus",
    "model_lock",
    "occlusion_map",
    "overlay",
]

METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "attention", "occlusion")


def _to_image_shape(cam: NDArray, shape: tuple[int, ...]) -> NDArray[np.float32]:
    """Normalise to [0, 1] and resize bilinearly to ``shape`` (H, W)."""
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32))
    cam = cam - cam.min()
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else np.zeros_like(cam)
    h, w = int(shape[0]), int(shape[1])
    out = np.asarray(Image.fromarray(np.ascontiguousarray(cam, dtype=np.float32)).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def model_lock(model: Any) -> threading.Lock:
    """The lock of one network: passes that read its hooks or module state run one at a time (held by
    the explanations here and by an eager runtime that runs this same module)."""
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.Lock()
        return lock


def _input_tensor(predictor: Any, gray: NDArray) -> Any:
    import torch

    return torch.from_numpy(predictor.preprocess(gray))[None]


def _cam(predictor: Any, gray: NDArray, plusplus: bool) -> NDArray[np.float32]:
    import torch

    model = predictor.torch_model
    layer = model.explain_layer
    store: dict[str, torch.Tensor] = {}

    explaining = threading.get_ident()

    def fwd_hook(_m: Any, _i: Any, out: torch.Tensor) -> None:
        if threading.get_ident() != explaining:  # another thread's forward through this module
            return
        store["a"] = out
        out.register_hook(lambda g: store.__setitem__("g", g))

    x = _input_tensor(predictor, gray)
    with model_lock(model):
        handle = layer.register_forward_hook(fwd_hook)
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                x = x.to(next(model.parameters()).device, next(model.parameters()).dtype).requires_grad_(True)
                logit = model(x)[0, 0]
                model.zero_grad(set_to_none=True)
                logit.backward()
        finally:
            handle.remove()
            model.train(was_training)
    a = store["a"].detach().float()[0]
    g = store["g"].detach().float()[0]
    if plusplus:
        g2, g3 = g.pow(2), g.pow(3)
        denom = 2 * g2 + a.sum(dim=(1, 2), keepdim=True) * g3
        alpha = torch.where(g != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g))
        weights = (alpha * torch.relu(g)).sum(dim=(1, 2))
    else:
        weights = g.mean(dim=(1, 2))
    cam = torch.relu((weights[:, None, None] * a).sum(0)).cpu().numpy()
    return _to_image_shape(cam, gray.shape[:2])


def grad_cam(predictor: Any, gray: NDArray) -> NDArray[np.float32]:
    """Grad-CAM (Selvaraju et al.) of the COVID logit on the last attention block; (H, W) in [0, 1]."""
    return _cam(predictor, gray, plusplus=False)


def grad_cam_plus_plus(predictor: Any, gray: NDArray) -> NDArray[np.float32]:
    """Grad-CAM++ (Chattopadhay et al.): pixel-wise weighted positive gradients; (H, W) in [0, 1]."""
    return _cam(predictor, gray, plusplus=True)


def attention_map(predictor: Any, gray: NDArray, stage: int | None = None) -> NDArray[np.float32]:
    """CT-Net soft-mask attention: channel mean of M(x) of one stage (1..3) or, by default, of all three.

    Raises
    ------
    ValueError
        If the network has no soft-mask attention (only ``ct-net`` has).
    """
    import torch

    model = predictor.torch_model
    modules = getattr(model, "attention_modules", None)
    if not modules:
        raise ValueError(f"{predictor.model_name} has no soft-mask attention; use gradcam, gradcam++ or occlusion "
                         "(or --network ct-net)")
    x = _input_tensor(predictor, gray).to(next(model.parameters()).dtype)
    with model_lock(model), torch.no_grad():
        model.eval()
        model(x)
        masks = [m.last_mask[0].float().mean(0, keepdim=True)[None] for m in modules]
    chosen = masks if stage is None else [masks[stage - 1]]
    size = predictor.input_size
    maps = []
    for mask in chosen:
        mask = torch.nn.functional.interpolate(mask, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        mask = mask - mask.min()
        maps.append((mask / mask.max().clamp_min(1e-12)).cpu().numpy())
    return _to_image_shape(np.mean(maps, axis=0), gray.shape[:2])


def occlusion_map(predictor: Any, gray: NDArray, patch: int = 32, stride: int = 16,
                  batch_size: int = 16) -> NDArray[np.float32]:
    """Occlusion sensitivity: how much the COVID probability drops when each patch is hidden.

    Parameters
    ----------
    patch, stride
        Patch side N and stride S in network-input pixels (the image is first preprocessed).
    """
    if patch <= 0 or stride <= 0:
        raise ValueError("patch and stride must be positive")
    x = predictor.preprocess(gray)
    size = x.shape[-1]
    base = float(predictor.predict(x[None])[0])
    positions = [(i, j) for i in range(0, max(size - patch, 0) + 1, stride)
                 for j in range(0, max(size - patch, 0) + 1, stride)]
    heat = np.zeros((size, size), dtype=np.float64)
    count = np.zeros((size, size), dtype=np.float64)
    for start in range(0, len(positions), batch_size):
        chunk = positions[start:start + batch_size]
        batch = np.repeat(x[None], len(chunk), axis=0)
        for k, (i, j) in enumerate(chunk):
            batch[k, :, i:i + patch, j:j + patch] = 0.0  # the standardised image mean
        drops = base - predictor.predict(batch)
        for (i, j), d in zip(chunk, drops, strict=True):
            heat[i:i + patch, j:j + patch] += d
            count[i:i + patch, j:j + patch] += 1
    heat = np.where(count > 0, heat / np.maximum(count, 1), 0.0)
    return _to_image_shape(np.maximum(heat, 0.0), gray.shape[:2])


_DISPATCH: dict[str, Callable[[Any, NDArray], NDArray[np.float32]]] = {
    "gradcam": grad_cam,
    "gradcam++": grad_cam_plus_plus,
    "attention": attention_map,
    "occlusion": occlusion_map,
}


def explain_image(predictor: Any, gray: NDArray, method: str = "gradcam") -> NDArray[np.float32]:
    """Heatmap of ``gray`` by ``method`` (one of :data:`METHODS`)."""
    if method not in _DISPATCH:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return _DISPATCH[method](predictor, gray)


def overlay(gray: NDArray, heatmap: NDArray, alpha: float = 0.4, colormap: str = "jet",
            min_level: float = 0.0) -> NDArray[np.uint8]:
    """Blend a [0, 1] heatmap (colour-mapped) over a greyscale image; returns (H, W, 3) uint8 RGB.

    Parameters
    ----------
    gray
        The displayed image (e.g. the lung-windowed slice), any numeric dtype.
    heatmap
        Same (H, W) as ``gray`` (it is resized if not), values in [0, 1].
    alpha
        Opacity of the heatmap at full strength; it scales with sqrt(heat), so a zero heatmap leaves
        the grey image unchanged.
    min_level
        Heat below this level is not drawn (keeps the anatomy visible where the model is indifferent).
    """
    from matplotlib import colormaps

    from engine.preprocess import to_uint8

    g = to_uint8(gray).astype(np.float32) / 255.0
    h = np.asarray(heatmap, dtype=np.float32)
    if h.shape != g.shape:
        h = _to_image_shape(h, g.shape)
    h = np.clip(np.nan_to_num(h), 0.0, 1.0)
    colours = colormaps[colormap](h)[..., :3].astype(np.float32)
    # opacity grows with the heat (sqrt: moderate heat stays visible), so cold areas keep the plain image
    a = (alpha * np.sqrt(h) * (h >= min_level))[..., None].astype(np.float32)
    rgb = (1 - a) * g[..., None] + a * colours
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
