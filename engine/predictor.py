"""The interface the workers call: ``load_predictor(kind) -> Predictor``.

A :class:`Predictor` turns greyscale images (from :mod:`engine.imageio`) into COVID probabilities
with THE preprocessing and the committed weights. Runtimes behind the same interface:

* ``torch``: PyTorch eager (CPU; CUDA in fp16 with ``device="cuda"``).
* ``onnxruntime``: ONNX Runtime CPU. The ONNX file (opset 17, dynamic batch) is exported from the
  weights on first use and cached next to them, keyed by the weights' sha256, in
  ``<weights dir>/.onnx-cache/`` (or ``~/.cache/covid-triage/onnx`` if that is read-only).
* ``auto``: onnxruntime if it imports and the export succeeds, else torch (the design's CPU
  default; ~2x faster than eager on these CPUs).

Default networks: ``ct`` -> ``deep-ct-net`` (the better of the two CT models on val, see its
model card), ``cxr`` -> ``deep-cxr-net``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from engine.preprocess import preprocess
from engine.weights import WeightsError, load_card, weights_dir, weights_path

__all__ = ["DEFAULT_MODELS", "Kind", "Predictor", "Runtime", "load_predictor"]

Kind = Literal["ct", "cxr"]
Runtime = Literal["auto", "torch", "onnxruntime"]

#: Network used for each kind of study unless ``model_name`` says otherwise.
DEFAULT_MODELS: dict[str, str] = {"ct": "deep-ct-net", "cxr": "deep-cxr-net"}
ONNX_OPSET = 17
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
    runtime
        ``"torch"`` or ``"onnxruntime"`` (what ``auto`` resolved to).
    card
        The model card (dict).
    """

    def __init__(self, kind: str, loaded: Any, runtime: str, device: str = "cpu",
                 session: Any | None = None) -> None:
        self.kind = kind
        self._loaded = loaded
        self.model_name: str = loaded.name
        self.model_version: str = loaded.version
        self.card: dict[str, Any] = loaded.card
        self.threshold: float = float(loaded.card.get("threshold", {}).get("value", 0.5))
        self.input_size: int = int(loaded.config.get("image_size", 256))
        self.runtime = runtime
        self.device = device
        self._session = session
        self._half = False
        if runtime == "torch":
            import torch

            if device.startswith("cuda"):
                self._half = True
                loaded.model.to(device).half()
            loaded.model.eval()
            torch.set_grad_enabled(torch.is_grad_enabled())

    def __repr__(self) -> str:
        return (f"Predictor(kind={self.kind!r}, model_version={self.model_version!r}, runtime={self.runtime!r}, "
                f"threshold={self.threshold:.4f}, input_size={self.input_size})")

    @property
    def torch_model(self) -> Any:
        """The fp32 torch network (used by :mod:`engine.explain` whatever the runtime)."""
        return self._loaded.model

    def preprocess(self, gray: NDArray) -> NDArray[np.float32]:
        """THE preprocessing at this model's input size: (3, S, S) float32."""
        return preprocess(gray, self.input_size)

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """COVID probabilities (N,) for a preprocessed batch (N, 3, S, S)."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (3, self.input_size, self.input_size):
            raise ValueError(f"expected a batch of shape (N, 3, {self.input_size}, {self.input_size}), got {x.shape}")
        if len(x) == 0:
            return np.zeros((0,), dtype=np.float32)
        if self._session is not None:
            logits = self._session.run(None, {"input": x})[0][:, 0]
        else:
            import torch

            with torch.inference_mode():
                t = torch.from_numpy(x).to(self.device)
                if self._half:
                    t = t.half()
                logits = self._loaded.model(t)[:, 0].float().cpu().numpy()
        return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)

    def predict_images(self, images: Sequence[NDArray], batch_size: int = 8) -> NDArray[np.float32]:
        """Preprocess and score greyscale images in batches; returns (len(images),) probabilities."""
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            out.append(self.predict(np.stack([self.preprocess(im) for im in chunk])))
        return np.concatenate(out) if out else np.zeros((0,), dtype=np.float32)

    def decide(self, scores: NDArray[np.floating]) -> NDArray[np.bool_]:
        """True where a score reaches the threshold (COVID suspected)."""
        return np.asarray(scores) >= self.threshold


def _onnx_cache_dir(wdir: Path) -> Path:
    for d in (wdir / ".onnx-cache", Path.home() / ".cache" / "covid-triage" / "onnx"):
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    return Path(tempfile.gettempdir())


def export_onnx(loaded: Any, path: Path) -> Path:
    """Export the network to ONNX (opset 17, dynamic batch axis), atomically."""
    import torch

    size = int(loaded.config.get("image_size", 256))
    model = loaded.model.eval()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter; dynamo needs onnxscript
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["input"], output_names=["logit"],
                          dynamic_axes={"input": {0: "batch"}, "logit": {0: "batch"}})
    os.replace(tmp, path)
    return path


def _ort_session(loaded: Any, wdir: Path) -> Any:
    import onnxruntime as ort

    path = _onnx_cache_dir(wdir) / f"{loaded.name}-{loaded.sha256[:16]}-opset{ONNX_OPSET}.onnx"
    if not path.is_file():
        export_onnx(loaded, path)
    opts = ort.SessionOptions()
    threads = int(os.environ.get("TRIAGE_ORT_THREADS", "0") or 0)
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def load_predictor(kind: Kind, runtime: Runtime = "auto", *, model_name: str | None = None,
                   weights_directory: Path | None = None, device: str = "cpu") -> Predictor:
    """Load the predictor for ``kind`` from the committed (or ``$TRIAGE_WEIGHTS_DIR``) weights.

    Parameters
    ----------
    kind
        ``"ct"`` (slices) or ``"cxr"`` (radiographs).
    runtime
        ``"auto"``, ``"torch"`` or ``"onnxruntime"`` (see the module docstring).
    model_name
        Override the network (``ct-net``, ``deep-ct-net``, ``deep-cxr-net``).
    weights_directory
        Folder of the weights; default :func:`engine.weights.weights_dir`.
    device
        ``"cpu"`` or ``"cuda"`` (torch runtime only; fp16 on CUDA).

    Raises
    ------
    WeightsError
        If the weights are missing or corrupt (the message names the file and how to make it).
    ValueError
        For an unknown kind or runtime.
    """
    from engine.weights import load_weights

    if kind not in DEFAULT_MODELS:
        raise ValueError(f"kind must be one of {sorted(DEFAULT_MODELS)}, got {kind!r}")
    if runtime not in ("auto", "torch", "onnxruntime"):
        raise ValueError(f"runtime must be auto, torch or onnxruntime, got {runtime!r}")
    name = model_name or DEFAULT_MODELS[kind]
    wdir = weights_directory or weights_dir()
    loaded = load_weights(name, wdir)
    if runtime == "torch" or device.startswith("cuda"):
        return Predictor(kind, loaded, "torch", device)
    try:
        session = _ort_session(loaded, wdir)
    except Exception as exc:
        if runtime == "onnxruntime":
            raise WeightsError(f"ONNX Runtime could not load {weights_path(name, wdir)}: {exc}") from exc
        _log.warning("engine.predictor.ort_unavailable: falling back to torch (%s)", exc)
        return Predictor(kind, loaded, "torch", device)
    return Predictor(kind, loaded, "onnxruntime", device, session=session)


def default_threshold(name: str, directory: Path | None = None) -> float:
    """The threshold recorded in a model's card (0.5 if it has none)."""
    return float(load_card(name, directory).get("threshold", {}).get("value", 0.5))
