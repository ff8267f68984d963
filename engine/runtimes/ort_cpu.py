"""ONNX Runtime on the CPU: the default runtime of a worker without a GPU.

Settings chosen, and why (measured on a 2-core AVX-512 EPYC; ``triage bench inference``):

* graph optimisation ``ORT_ENABLE_ALL``: constant folding, Conv+BatchNorm+ReLU fusion and the NCHWc
  blocked layout for AVX-512 convolutions (``ORT_ENABLE_EXTENDED``, without NCHWc, was 20-25 % slower).
* one run per core, each single-threaded, over slices of the batch (``run`` is thread-safe and
  releases the GIL): these networks are long chains of small operators, and splitting each operator
  across cores costs a synchronisation per operator. Measured at batch 8 on 2 cores: 2.2-3.0x eager
  PyTorch this way, 1.7-2.0x with one two-threaded run. ``TRIAGE_ORT_THREADS`` sets the number of
  cores (default: the process's affinity mask, so a container's CPU set counts, not the host's).
* batch 4 per core: the measured optimum; larger batches fall out of the caches.
* int8 quantisation (QDQ, per-channel, static) was measured and not used: no faster on these
  small-growth DenseNets (the time goes to memory-bound BatchNorm, Concat and layout reorders).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from engine.runtimes.base import BackendInfo, RuntimeUnavailable

__all__ = ["OrtBackend", "available_cores"]

#: Slices per core in one batch.
BATCH_PER_CORE = 4


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers restrict)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class OrtBackend:
    """An ONNX Runtime CPU session over a (grey-input) ONNX export, run on every core at once."""

    def __init__(self, onnx_path: Path, *, threads: int | None = None, channels: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeUnavailable("onnxruntime is not installed: reinstall the node (bash ops/setup.sh)") from exc
        if threads is None:
            threads = int(os.environ.get("TRIAGE_ORT_THREADS", "0") or 0) or available_cores()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(onnx_path), sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise RuntimeUnavailable(f"ONNX Runtime cannot load {onnx_path} ({exc}); delete the file to re-export it") \
                from exc
        self._threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ort") if threads > 1 else None
        self.info = BackendInfo("onnxruntime", "fp32", "cpu", channels, BATCH_PER_CORE * threads,
                                f"{threads} parallel single-threaded runs, ORT_ENABLE_ALL")

    def _run(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.asarray(self._session.run(None, {"input": x})[0], dtype=np.float32).reshape(len(x))

    def logits(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        parts = min(self._threads, len(x))
        if self._pool is None or parts <= 1:
            return self._run(x)
        chunks = [np.ascontiguousarray(c) for c in np.array_split(x, parts)]
        return np.concatenate(list(self._pool.map(self._run, chunks)))
