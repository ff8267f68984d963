"""The interface the workers call: ``load_predictor(kind) -> Predictor``.

A :class:`Predictor` turns greyscale images (from :mod:`engine.imageio`) into COVID probabilities
with THE preprocessing and the committed weights; a backend from :mod:`engine.runtimes` does the
arithmetic:

* ``onnxruntime``: ONNX Runtime on the CPU (the default without a GPU; ~2-3x eager PyTorch), int8
  where committed calibration ranges allow it (``TRIAGE_CPU_PRECISION``, see
  :mod:`engine.runtimes.ort_cpu`), else fp32;
* ``cuda``: PyTorch on a GPU in fp16, channels_last, CUDA graphs;
* ``tensorrt``: a TensorRT fp16 engine built from the ONNX export (optional extra);
* ``torch``: eager PyTorch fp32, the reference and the last fallback;
* ``auto``: the fastest of these that loads here (see :mod:`engine.runtimes`).

``TRIAGE_RUNTIME`` picks the runtime for the workers. Default networks: ``ct`` -> ``deep-ct-net``
(the better of the two CT models on val, see its model card), ``cxr`` -> ``deep-cxr-net``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from engine.preprocess import preprocess
from engine.runtimes import RUNTIMES, Backend, RuntimeUnavailable, gpu_present
from engine.runtimes.onnx_export import ONNX_OPSET, export_onnx
from engine.weights import WeightsError, load_card, weights_dir, weights_path

__all__ = ["DEFAULT_MODELS", "ONNX_OPSET", "Kind", "Predictor", "Runtime", "auto_backend", "export_onnx",
           "load_predictor", "make_backend"]

Kind = Literal["ct", "cxr"]
Runtime = Literal["auto", "tensorrt", "cuda", "onnxruntime", "torch"]

#: Network used for each kind of study unless ``model_name`` says otherwise.
DEFAULT_MODELS: dict[str, str] = {"ct": "deep-ct-net", "cxr": "deep-cxr-net"}
_log = logging.getLogger("engine.predictor")


class Predictor:
    """COVID probability for greyscale images, with a fixed model, threshold and input size.

    Attributes
    ----------
    kind
        ``"ct"`` or ``"cxr"``.
    model_name
        Registry name of the network (e.g. ``deep-ct-net``).
    model_version
        ``NAME@<sha256 prefix of the weights>``; changes whenever the weights do.
    threshold
        Decision threshold on the probability (chosen on the validation split; see the card).
    input_size
        Side of the square network input.
    backend
        The runtime doing the arithmetic; ``runtime``, ``precision``, ``device`` and ``batch_size``
        repeat its :class:`~engine.runtimes.BackendInfo`.
    card
        The model card (dict).
    """

    def __init__(self, kind: str, loaded: Any, backend: Backend) -> None:
        self.kind = kind
        self._loaded = loaded
        self.backend = backend
        self.model_name: str = loaded.name
        self.model_version: str = loaded.version
        self.card: dict[str, Any] = loaded.card
        self.threshold: float = float(loaded.card.get("threshold", {}).get("value", 0.5))
        self.input_size: int = int(loaded.config.get("image_size", 256))
        self.runtime: str = backend.info.runtime
        self.precision: str = backend.info.precision
        self.device: str = backend.info.device
        self.batch_size: int = backend.info.batch_size
        self.gpu_preprocessing = self.device.startswith("cuda") and os.environ.get("TRIAGE_GPU_PREPROCESS", "1") != "0"

    def __repr__(self) -> str:
        return (f"Predictor(kind={self.kind!r}, model_version={self.model_version!r}, runtime={self.runtime!r}, "
                f"precision={self.precision!r}, device={self.device!r}, threshold={self.threshold:.4f}, "
                f"input_size={self.input_size})")

    @property
    def torch_model(self) -> Any:
        """The fp32 three-channel torch network (used by :mod:`engine.explain` whatever the runtime)."""
        return self._loaded.model

    def preprocess(self, gray: NDArray) -> NDArray[np.float32]:
        """THE preprocessing at this model's input size: (3, S, S) float32, as in training."""
        return preprocess(gray, self.input_size)

    def prepare(self, images: Sequence[NDArray]) -> Any:
        """A batch ready for :meth:`predict`: THE preprocessing, in the channels the backend takes,
        on the GPU (a tensor on the backend's device) when the backend runs there."""
        if self.gpu_preprocessing:
            from engine.preprocess_torch import preprocess_batch_torch

            return preprocess_batch_torch(list(images), self.input_size, self.device, channels=self.backend.info.channels)
        channels = self.backend.info.channels
        if not images:
            return np.zeros((0, channels, self.input_size, self.input_size), np.float32)
        return np.stack([preprocess(im, self.input_size, channels) for im in images])

    def predict(self, batch: Any) -> NDArray[np.float32]:
        """COVID probabilities (N,) for a preprocessed batch (N, 3, S, S) or (N, 1, S, S).

        Three channels must be identical (greyscale replicated, as THE preprocessing makes them);
        backends that take one channel get the first.
        """
        shape = tuple(batch.shape)
        if len(shape) != 4 or shape[1] not in (1, 3) or shape[2:] != (self.input_size, self.input_size):
            raise ValueError(f"expected a batch of shape (N, 3 or 1, {self.input_size}, {self.input_size}), "
                             f"got {shape}")
        if shape[0] == 0:
            return np.zeros((0,), dtype=np.float32)
        if isinstance(batch, np.ndarray):
            batch = np.ascontiguousarray(batch, dtype=np.float32)
        if shape[1] == 3 and self.backend.info.channels == 1:
            if not (_same(batch[:, 0], batch[:, 1]) and _same(batch[:, 0], batch[:, 2])):
                raise ValueError("the networks take greyscale replicated to three channels; "
                                 "these three channels differ")
            batch = batch[:, :1]
        logits = self.backend.logits(batch)
        return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)

    def predict_images(self, images: Sequence[NDArray], batch_size: int | None = None) -> NDArray[np.float32]:
        """Preprocess and score greyscale images in batches; returns (len(images),) probabilities."""
        size = batch_size or self.batch_size
        out = [self.predict(self.prepare(images[i:i + size])) for i in range(0, len(images), size)]
        return np.concatenate(out) if out else np.zeros((0,), dtype=np.float32)

    def decide(self, scores: NDArray[np.floating]) -> NDArray[np.bool_]:
        """True where a score reaches the threshold (COVID suspected)."""
        return np.asarray(scores) >= self.threshold


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    import torch

    return bool(torch.equal(a, b))


def make_backend(runtime: str, loaded: Any, wdir: Path, device: str | None = None) -> Backend:
    """The backend for one named runtime (not ``auto``).

    Raises
    ------
    RuntimeUnavailable
        If that runtime cannot run here; the message says what is missing.
    """
    if runtime == "onnxruntime":
        from engine.runtimes.ort_cpu import OrtBackend

        return OrtBackend.from_weights(loaded, wdir)
    if runtime == "cuda":
        from engine.runtimes.torch_cuda import CudaBackend

        return CudaBackend(loaded, device or "cuda")
    if runtime == "tensorrt":
        from engine.runtimes.tensorrt_backend import TensorRTBackend

        index = int(device.split(":")[1]) if device and ":" in device else 0
        return TensorRTBackend(loaded, wdir, device_index=index)
    if runtime == "torch":
        from engine.runtimes.torch_eager import EagerBackend

        return EagerBackend(loaded.model, device or "cpu")
    raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")


def _auto_order(device: str | None) -> list[str]:
    on_gpu = device.startswith("cuda") if device is not None else gpu_present()
    return ["tensorrt", "cuda", "onnxruntime", "torch"] if on_gpu else ["onnxruntime", "torch"]


def auto_backend(loaded: Any, wdir: Path, device: str | None = None) -> Backend:
    """The fastest backend that loads here (see :mod:`engine.runtimes`); each fallback is logged.

    Raises
    ------
    RuntimeUnavailable
        If none loads; the message gives every runtime's reason.
    """
    reasons = []
    for candidate in _auto_order(device):
        try:
            backend = make_backend(candidate, loaded, wdir, device)
        except RuntimeUnavailable as exc:
            reasons.append(f"{candidate}: {exc}")
            continue
        if reasons:
            _log.warning("engine.predictor.runtime_fallback: using %s (%s)", candidate, "; ".join(reasons))
        return backend
    raise RuntimeUnavailable("; ".join(reasons))


def load_predictor(kind: Kind, runtime: Runtime | str = "auto", *, model_name: str | None = None,
                   weights_directory: Path | None = None, device: str | None = None) -> Predictor:
    """Load the predictor for ``kind`` from the committed (or ``$TRIAGE_WEIGHTS_DIR``) weights.

    Parameters
    ----------
    kind
        ``"ct"`` (slices) or ``"cxr"`` (radiographs).
    runtime
        ``auto``, ``tensorrt``, ``cuda``, ``onnxruntime`` or ``torch`` (see the module docstring).
    model_name
        Override the network (``ct-net``, ``deep-ct-net``, ``deep-cxr-net``).
    weights_directory
        Folder of the weights; default :func:`engine.weights.weights_dir`.
    device
        ``cpu`` or ``cuda[:N]``; default: the runtime's own (a GPU for tensorrt and cuda).

    Raises
    ------
    WeightsError
        If the weights are missing or corrupt (the message names the file and how to make it), or a
        runtime named explicitly cannot run here.
    ValueError
        For an unknown kind or runtime.
    """
    from engine.weights import load_weights

    if kind not in DEFAULT_MODELS:
        raise ValueError(f"kind must be one of {sorted(DEFAULT_MODELS)}, got {kind!r}")
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    name = model_name or DEFAULT_MODELS[kind]
    wdir = weights_directory or weights_dir()
    loaded = load_weights(name, wdir)
    if runtime != "auto":
        try:
            return Predictor(kind, loaded, make_backend(runtime, loaded, wdir, device))
        except RuntimeUnavailable as exc:
            raise WeightsError(f"runtime {runtime} cannot run {weights_path(name, wdir)} here: {exc}") from exc
    try:
        return Predictor(kind, loaded, auto_backend(loaded, wdir, device))
    except RuntimeUnavailable as exc:
        raise WeightsError(f"no runtime can run {weights_path(name, wdir)}: {exc}") from exc


def default_threshold(name: str, directory: Path | None = None) -> float:
    """The threshold recorded in a model's card (0.5 if it has none)."""
    return float(load_card(name, directory).get("threshold", {}).get("value", 0.5))
