"""What every inference runtime provides to :class:`engine.predictor.Predictor`.

A runtime ("backend") turns a preprocessed batch into one logit per image. The predictor owns the
preprocessing, the sigmoid and the threshold; a backend owns only the arithmetic, so that the eager
PyTorch baseline, ONNX Runtime, CUDA PyTorch and TensorRT are interchangeable and benchmarked on
identical inputs.

Input channels: the networks were trained on greyscale replicated to three channels. Backends that
fold the replication into the first convolution (``channels == 1``, see :mod:`engine.runtimes.grey`)
take one channel and do a third of the stem's work; the predictor hands each backend the channels it
declares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

__all__ = ["Backend", "BackendInfo", "RuntimeUnavailable"]


class RuntimeUnavailable(RuntimeError):
    """A runtime cannot run on this machine (no GPU, library not installed, export failed).

    The message says what is missing and how to get it; ``auto`` catches it and falls back.
    """


@dataclass(frozen=True)
class BackendInfo:
    """How a backend computes, as printed by ``triage bench inference`` and logged at start-up.

    Attributes
    ----------
    runtime
        ``torch`` (eager), ``onnxruntime``, ``cuda`` (PyTorch on a GPU) or ``tensorrt``.
    precision
        ``fp32``, ``fp16`` (GPU runtimes) or ``int8`` (ONNX Runtime on the CPU from calibrated ranges).
    device
        ``cpu`` or ``cuda:N``.
    channels
        Input channels the backend takes: 3 (as trained) or 1 (grey input folded into the stem).
    batch_size
        Batch the backend is fastest at; the worker sends slices in batches of this size.
    detail
        Free text: threads, graphs, engine cache file...
    """

    runtime: str
    precision: str
    device: str
    channels: int
    batch_size: int
    detail: str = ""


@runtime_checkable
class Backend(Protocol):
    """One runtime's forward pass."""

    info: BackendInfo

    def logits(self, batch: Any) -> NDArray[np.float32]:
        """Logits (N,) for a batch (N, C, S, S) with C = ``info.channels``.

        ``batch`` is a float32 NumPy array; GPU backends also accept a torch tensor already on
        their device (GPU preprocessing), which avoids a round trip through host memory.
        """
        ...
