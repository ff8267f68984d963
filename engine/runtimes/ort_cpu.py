"""ONNX Runtime on the CPU: the default runtime of a worker without a GPU.

Settings chosen, and why (measured on a 2-core AVX-512 EPYC; ``triage bench inference``):

* graph optimisation ``ORT_ENABLE_ALL``: constant folding, Conv+BatchNorm+ReLU fusion and the NCHWc
  blocked layout for AVX-512 convolutions; most of the gain over eager PyTorch.
* intra-op threads = the cores this process may use (``os.sched_getaffinity``, so a container's
  CPU set counts, not the host's), inter-op 1 and sequential execution: a CNN is one chain of
  operators, and more threads than cores only fight each other.
* spinning on (``TRIAGE_ORT_SPIN=0`` turns it off): idle threads spin briefly before sleeping, ~7 %
  faster at batch 8; turn it off where the worker shares its cores with busy processes.
* batch 8: the measured optimum; larger batches fall out of the caches.
* int8 quantisation (QDQ, per-channel, static) was measured and not used: no faster on these
  small-growth DenseNets (the time goes to memory-bound BatchNorm, Concat and layout reorders).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from engine.runtimes.base import BackendInfo, RuntimeUnavailable

__all__ = ["OrtBackend", "available_cores"]

BATCH_SIZE = 8


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers restrict)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class OrtBackend:
    """An ONNX Runtime CPU session over a (grey-input) ONNX export."""

    def __init__(self, onnx_path: Path, *, threads: int | None = None, spin: bool | None = None,
                 channels: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeUnavailable("onnxruntime is not installed: reinstall the node (bash ops/setup.sh)") from exc
        if threads is None:
            threads = int(os.environ.get("TRIAGE_ORT_THREADS", "0") or 0) or available_cores()
        if spin is None:
            spin = os.environ.get("TRIAGE_ORT_SPIN", "1") != "0"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            self._session = ort.InferenceSession(str(onnx_path), sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise RuntimeUnavailable(f"ONNX Runtime cannot load {onnx_path} ({exc}); delete the file to re-export it") \
                from exc
        self.info = BackendInfo("onnxruntime", "fp32", "cpu", channels, BATCH_SIZE,
                                f"{threads} threads, spin {'on' if spin else 'off'}, ORT_ENABLE_ALL")

    def logits(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return np.asarray(self._session.run(None, {"input": x})[0], dtype=np.float32).reshape(len(x))
