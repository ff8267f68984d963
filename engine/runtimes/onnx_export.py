"""ONNX export of the networks, cached next to the weights by the weights' hash.

One file per weights file and input layout: ``<cache>/NAME-<sha256[:16]>-opset17-grey.onnx``, with a
dynamic batch axis and one input channel (:mod:`engine.runtimes.grey`). ONNX Runtime runs it on the
CPU and TensorRT builds its engines from it, so both runtimes start from the same checked graph.
The cache folder is ``<weights dir>/.onnx-cache/`` or, where that is read-only (an installed
package, a read-only container layer), ``~/.cache/covid-triage/onnx``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["ONNX_OPSET", "RELATIVE_TOLERANCE", "cache_dir", "cached_onnx", "export_onnx", "graph_digest",
           "relative_error"]

ONNX_OPSET = 17
#: Bound on |logit_onnx - logit_torch| / max(1, |logit_torch|) that the tests hold every export to.
#: fp32 re-association in fused kernels gives ~1e-6 here; 1e-4 leaves room for other CPUs' kernels.
RELATIVE_TOLERANCE = 1e-4


def cache_dir(weights_directory: Path) -> Path:
    """The first writable folder for derived model files (ONNX, TensorRT engines)."""
    for d in (weights_directory / ".onnx-cache", Path.home() / ".cache" / "covid-triage" / "onnx"):
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    return Path(tempfile.gettempdir())


def export_onnx(loaded: Any, path: Path, *, grey: bool = True) -> Path:
    """Export ``loaded.model`` to ONNX at ``path`` (atomically: a reader never sees half a file).

    Parameters
    ----------
    loaded
        :class:`engine.weights.LoadedWeights`.
    grey
        Fold the three identical input channels into the stem (input ``(N, 1, S, S)``); False keeps
        the trained three-channel input.
    """
    import torch

    from engine.runtimes.grey import fold_grey_input

    size = int(loaded.config.get("image_size", 256))
    model = fold_grey_input(loaded.model) if grey else loaded.model.eval()
    channels = 1 if grey else 3
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(model, (torch.zeros(1, channels, size, size),), str(tmp), dynamo=False,
                              opset_version=ONNX_OPSET, input_names=["input"], output_names=["logit"],
                              dynamic_axes={"input": {0: "batch"}, "logit": {0: "batch"}})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def cached_onnx(loaded: Any, weights_directory: Path, *, grey: bool = True) -> Path:
    """The ONNX file for these weights, exported on first use."""
    suffix = "-grey" if grey else ""
    path = cache_dir(weights_directory) / f"{loaded.name}-{loaded.sha256[:16]}-opset{ONNX_OPSET}{suffix}.onnx"
    if not path.is_file():
        export_onnx(loaded, path, grey=grey)
    return path


def graph_digest(path: Path) -> str:
    """sha256 of an ONNX model's graph with the values of its initializers left out.

    Why not the file's hash: the export is not byte-for-byte the same on every machine. From the
    same weights and torch 2.13, an AMD EPYC wrote a file whose hash differs from the one an Intel
    Xeon wrote (on one machine it is the same run after run). The exporter computes a third of the
    initializers itself (each BatchNormalization that follows a convolution is folded into it), so
    float rounding there is the likely cause. What int8 ranges depend on is the graph (operators,
    attributes, tensor names, shapes) and the weights it was exported from; the weights are checked
    by their own hash. Initializer names, types and shapes stay in the digest, Constant nodes' values
    too.
    """
    import hashlib

    import onnx

    model = onnx.load(str(path))
    for init in model.graph.initializer:
        kept = onnx.TensorProto(name=init.name, data_type=init.data_type, dims=init.dims)
        init.CopyFrom(kept)
    model.producer_name = model.producer_version = model.doc_string = ""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def relative_error(candidate: NDArray[np.floating], reference: NDArray[np.floating]) -> float:
    """max |candidate - reference| / max(1, |reference|): absolute near zero, relative for large logits."""
    c = np.asarray(candidate, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if c.shape != r.shape:
        raise ValueError(f"shapes differ: {c.shape} vs {r.shape}")
    if c.size == 0:
        return 0.0
    return float(np.max(np.abs(c - r) / np.maximum(1.0, np.abs(r))))
