"""ONNX Runtime on the CPU: the default runtime of a worker without a GPU.

Settings chosen, and why (measured on a 2-core AVX-512 VNNI EPYC; ``triage bench inference``):

* graph optimisation ``ORT_ENABLE_ALL``: constant folding, Conv+BatchNorm+ReLU fusion and the NCHWc
  blocked layout for AVX-512 convolutions (``ORT_ENABLE_EXTENDED``, without NCHWc, was 20-25 % slower).
* one run per core, each single-threaded, over slices of the batch (``run`` is thread-safe and
  releases the GIL): these networks are long chains of small operators, and splitting each operator
  across cores costs a synchronisation per operator. Measured at batch 8 on 2 cores: 2.2-3.0x eager
  PyTorch this way, 1.7-2.0x with one two-threaded run. ``TRIAGE_ORT_THREADS`` sets the number of
  cores (default: the process's affinity mask, so a container's CPU set counts, not the host's).
* fewer slices than cores (a radiograph is one image; so is a CT batch of 1 in the benchmark): one run
  of a second session that splits each operator across every core, made at the first such batch.
  Single-threaded, one core would idle. deep-cxr-net, one 192x192 image: 24.0 against 34.4 ms per run
  (6 alternating rounds). ``triage bench inference --batches 1``, the default runtimes before and after,
  one after the other: deep-cxr-net 27.9 to 34.7 images/s (2.05x to 2.51x eager), ct-net 76.1 to 126.6
  (2.38x to 3.37x), deep-ct-net int8 72.8 to 83.5 (2.18x to 2.39x; its fp32 gains more, 61.9 to 94.9:
  int8 spreads less well over threads).
* batch 4 per core: the measured optimum; larger batches fall out of the caches.
* precision (``TRIAGE_CPU_PRECISION``: ``auto``, ``fp32`` or ``int8``): static int8 (QDQ, per-channel
  int8 weights, uint8 activations; :mod:`engine.runtimes.int8`) where committed calibration ranges
  match the weights and the fp32 export's graph and passed their accuracy check on val, else fp32; ``auto`` and
  ``int8`` both fall back to fp32 with the reason logged. Run this way (single-threaded runs in
  parallel), int8 deep-ct-net made 136 against 121 images/s at batch 1, 260 against 213 at batch 8
  and 222 against 175 at batch 32 (+12 %, +22 %, +27 %; ct-net +31-43 %, deep-cxr-net +6-24 %). An
  earlier measurement found int8 no faster, with one two-threaded run, where the time went to
  synchronisation. What int8 does not save: BatchNormalization before each convolution stays fp32
  between Dequantize and Quantize nodes, and QLinearConcat re-scales every input of DenseNet's
  concatenations. deep-ct-net ships ranges (its int8 agreed with fp32 on val within the bounds of
  :mod:`engine.calibrate`, see there), so ``auto`` runs it int8 on VNNI CPUs; ct-net and deep-cxr-net
  did not pass and run fp32.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.runtimes.base import BackendInfo, RuntimeUnavailable

__all__ = ["CPU_PRECISIONS", "OrtBackend", "available_cores", "cpu_precision"]

#: Slices per core in one batch.
BATCH_PER_CORE = 4
#: Values of ``TRIAGE_CPU_PRECISION``.
CPU_PRECISIONS = ("auto", "fp32", "int8")
_log = logging.getLogger("engine.runtimes")


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers restrict)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def cpu_precision() -> str:
    """``TRIAGE_CPU_PRECISION`` (default ``auto``), checked.

    Raises
    ------
    ValueError
        If it is set to something else than ``auto``, ``fp32`` or ``int8``.
    """
    value = os.environ.get("TRIAGE_CPU_PRECISION", "").strip().lower() or "auto"
    if value not in CPU_PRECISIONS:
        raise ValueError(f"TRIAGE_CPU_PRECISION must be one of {', '.join(CPU_PRECISIONS)}, got {value!r}")
    return value


class OrtBackend:
    """An ONNX Runtime CPU session over a (grey-input) ONNX model, run on every core at once.

    ``precision`` only labels :attr:`info`: the model file decides the arithmetic. Use
    :meth:`from_weights` to get the model for a precision.
    """

    def __init__(self, onnx_path: Path, *, threads: int | None = None, channels: int = 1,
                 precision: str = "fp32") -> None:
        if threads is None:
            threads = int(os.environ.get("TRIAGE_ORT_THREADS", "0") or 0) or available_cores()
        self._onnx_path = onnx_path
        self._session = self._load(1)
        self._threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ort") if threads > 1 else None
        self._whole: Any = None  # the multi-threaded session for batches smaller than the cores, made at first use
        self._whole_lock = threading.Lock()
        self.info = BackendInfo("onnxruntime", precision, "cpu", channels, BATCH_PER_CORE * threads,
                                f"{threads} parallel single-threaded runs (one {threads}-threaded run below {threads} "
                                f"slices), ORT_ENABLE_ALL")

    def _load(self, threads: int) -> Any:
        """A session of the model with ``threads`` intra-op threads."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeUnavailable("onnxruntime is not installed: reinstall the node (bash ops/setup.sh)") from exc
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            return ort.InferenceSession(str(self._onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise RuntimeUnavailable(
                f"ONNX Runtime cannot load {self._onnx_path} ({exc}); delete the file to re-export it") from exc

    @classmethod
    def from_weights(cls, loaded: Any, weights_directory: Path, *, precision: str | None = None,
                     threads: int | None = None) -> OrtBackend:
        """The backend for these weights: their grey fp32 export, or its int8 model where allowed.

        Parameters
        ----------
        loaded
            :class:`engine.weights.LoadedWeights`.
        precision
            ``auto``, ``fp32`` or ``int8``; default :func:`cpu_precision`. ``auto`` and ``int8`` run
            int8 where :func:`engine.runtimes.int8.cached_int8` gives a model and fp32 otherwise,
            logging why (``engine.runtimes.int8_refused``; at info level for ``auto`` on a model that
            was never calibrated).

        Raises
        ------
        RuntimeUnavailable
            If onnxruntime is missing or the ONNX export fails.
        ValueError
            For an unknown precision.
        """
        from engine.runtimes.int8 import cached_int8, ranges_path
        from engine.runtimes.onnx_export import cached_onnx

        precision = precision or cpu_precision()
        if precision not in CPU_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(CPU_PRECISIONS)}, got {precision!r}")
        try:
            fp32 = cached_onnx(loaded, weights_directory)
        except Exception as exc:  # the exporter raises many types on a model it cannot trace
            raise RuntimeUnavailable(f"ONNX export of {loaded.name} failed ({exc})") from exc
        if precision != "fp32":
            try:
                return cls(cached_int8(loaded, weights_directory, fp32), threads=threads, precision="int8")
            except RuntimeUnavailable as exc:
                quiet = precision == "auto" and not ranges_path(loaded.name, weights_directory).exists()
                _log.log(logging.INFO if quiet else logging.WARNING,
                         "engine.runtimes.int8_refused: %s runs fp32 (%s)", loaded.name, exc)
        return cls(fp32, threads=threads)

    def _run(self, x: NDArray[np.float32], session: Any = None) -> NDArray[np.float32]:
        session = session or self._session
        return np.asarray(session.run(None, {"input": x})[0], dtype=np.float32).reshape(len(x))

    def _whole_session(self) -> Any:
        with self._whole_lock:
            if self._whole is None:
                self._whole = self._load(self._threads)
            return self._whole

    def logits(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if self._pool is None:
            return self._run(x)
        if len(x) < self._threads:  # a core would idle: one run with every core on each operator
            return self._run(x, self._whole_session())
        chunks = [np.ascontiguousarray(c) for c in np.array_split(x, self._threads)]
        return np.concatenate(list(self._pool.map(self._run, chunks)))
