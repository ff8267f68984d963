"""TensorRT: an fp16 engine built from the ONNX export, cached per weights, GPU and TensorRT version.

Why it is built this way:

* **from the ONNX export** (:func:`engine.runtimes.onnx_export.cached_onnx`): the same grey-input
  graph ONNX Runtime runs and the tests check against PyTorch, so TensorRT starts from a verified graph.
* **fp16** (``BuilderFlag.FP16``): TensorRT may pick fp16 kernels wherever it is faster; inputs and
  outputs stay float32 as in the ONNX graph.
* **one optimisation profile** over the batch axis, min 1, opt ``opt_batch``, max ``max_batch``: any
  batch in between runs without padding; kernels are tuned for ``opt_batch``.
* **engine cache**: building takes minutes and an engine only runs on the GPU model and TensorRT
  version that built it, so the serialised engine is stored in
  :func:`engine.runtimes.onnx_export.cache_dir` under :func:`engine_cache_key` (weights hash, GPU
  name and compute capability, TensorRT version, precision, profile shapes). Any change to one of
  them builds a new engine; an engine that no longer deserialises is rebuilt.
* **timing cache**: the per-layer kernel timings TensorRT measures while building, stored beside
  the engines under :func:`timing_cache_key` (GPU, TensorRT version, precision; no weights hash, so
  deep-ct-net's DenseNet timings speed up deep-cxr-net's build too). TensorRT checks the cache's
  header itself and ignores a cache from another device.
* files are written atomically (temporary name, then ``os.replace``) and builds are serialised with a
  lock file, so workers starting together on one GPU build once and never read half an engine.
* **no pycuda**: PyTorch owns the device memory and the stream; TensorRT gets raw pointers
  (``data_ptr()``) and the current stream's handle.

``import tensorrt`` happens inside functions only: this module imports on machines without it, and
the backend then raises :class:`~engine.runtimes.base.RuntimeUnavailable` saying how to install it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.runtimes.base import BackendInfo, RuntimeUnavailable
from engine.runtimes.onnx_export import cache_dir, cached_onnx

__all__ = ["TensorRTBackend", "engine_cache_key", "import_tensorrt", "timing_cache_key", "write_atomic"]

#: Scratch memory TensorRT's kernels may use (builder and runtime). 4 GiB fits every tactic these
#: networks have at batch 256 and leaves most of a 16+ GiB GPU to activations.
WORKSPACE_BYTES = 4 << 30
INPUT_NAME, OUTPUT_NAME = "input", "logit"
_INSTALL_HINT = ("pip install '.[tensorrt]' on a machine with an NVIDIA GPU and driver, or use "
                 "TRIAGE_RUNTIME=cuda (PyTorch fp16) or onnxruntime")


def _slug(text: str) -> str:
    """Letters, digits, ``.`` and ``-`` only: safe in a file name on every filesystem."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "unknown"


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def timing_cache_key(*, gpu_name: str, compute_capability: tuple[int, int], trt_version: str,
                     precision: str) -> str:
    """File-name-safe key of a timing cache: what its timings depend on (not the network)."""
    major, minor = compute_capability
    return f"{_slug(gpu_name)}-sm{major}{minor}-trt{_slug(trt_version)}-{_slug(precision)}"


def engine_cache_key(*, weights_sha256: str, gpu_name: str, compute_capability: tuple[int, int],
                     trt_version: str, precision: str, min_shape: Sequence[int], opt_shape: Sequence[int],
                     max_shape: Sequence[int]) -> str:
    """File-name-safe key of a serialised engine; it changes whenever any input changes.

    Readable parts (weights hash prefix, GPU, ``smXY``, TensorRT version, precision, profile) say
    what an engine is for at a glance; a digest of all inputs, in full, keeps two keys apart even
    where the readable parts are shortened or slugged alike.
    """
    parts = [weights_sha256, gpu_name, f"{compute_capability[0]}.{compute_capability[1]}", trt_version, precision,
             _shape(min_shape), _shape(opt_shape), _shape(max_shape)]
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]
    device = timing_cache_key(gpu_name=gpu_name, compute_capability=compute_capability, trt_version=trt_version,
                              precision=precision)
    profile = f"b{int(min_shape[0])}-{int(opt_shape[0])}-{int(max_shape[0])}-{_shape(max_shape[1:])}"
    return f"{_slug(weights_sha256[:16])}-{device}-{profile}-{digest}"


def write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write ``path`` so that a reader sees the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across processes (POSIX ``flock``; no lock where there is none)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module (version 10 or later), or RuntimeUnavailable saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeUnavailable(f"TensorRT is not installed: {_INSTALL_HINT} ({exc})") from exc
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise RuntimeUnavailable(f"TensorRT {trt.__version__} is too old (10 or later needed): {_INSTALL_HINT}")
    return trt


class TensorRTBackend:
    """A TensorRT fp16 engine over the grey-input ONNX export, run on PyTorch's CUDA stream.

    Parameters
    ----------
    loaded
        :class:`engine.weights.LoadedWeights`.
    weights_directory
        Folder of the weights; the ONNX export, engines and timing caches go to its cache folder.
    max_batch, opt_batch
        The optimisation profile's largest and tuned-for batch; larger batches are split.
    device_index
        CUDA device to build for and run on.

    Attributes
    ----------
    engine_path, timing_cache_path
        Where the serialised engine and the timing cache live.
    built
        True if this instance built the engine, False if it loaded a cached one.

    Raises
    ------
    RuntimeUnavailable
        TensorRT or a CUDA GPU is missing, the ONNX file does not parse, or the build fails.
    """

    def __init__(self, loaded: Any, weights_directory: Path, *, max_batch: int = 256, opt_batch: int = 64,
                 device_index: int = 0) -> None:
        if not 1 <= opt_batch <= max_batch:
            raise ValueError(f"need 1 <= opt_batch <= max_batch, got opt_batch={opt_batch}, max_batch={max_batch}")
        trt = import_tensorrt()
        import torch

        from engine.runtimes.torch_cuda import HostUploader, resolve_cuda_device

        device = resolve_cuda_device(f"cuda:{device_index}")
        self._trt, self._torch, self.device = trt, torch, device
        self.max_batch = max_batch
        self.image_size = size = int(loaded.config.get("image_size", 256))
        shapes = [(b, 1, size, size) for b in (1, opt_batch, max_batch)]
        gpu = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        cc = (int(major), int(minor))
        key = engine_cache_key(weights_sha256=loaded.sha256, gpu_name=gpu, compute_capability=cc,
                               trt_version=trt.__version__, precision="fp16", min_shape=shapes[0],
                               opt_shape=shapes[1], max_shape=shapes[2])
        folder = cache_dir(Path(weights_directory))
        self.engine_path = folder / f"{loaded.name}-{key}.engine"
        self.timing_cache_path = folder / ("timing-" + timing_cache_key(
            gpu_name=gpu, compute_capability=cc, trt_version=trt.__version__, precision="fp16") + ".cache")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.built = False
        with torch.cuda.device(device):
            self._engine = self._load()
            if self._engine is None:
                with _build_lock(folder / f".{self.engine_path.name}.lock"):
                    self._engine = self._load()  # another worker may have built it while we waited
                    if self._engine is None:
                        onnx_path = cached_onnx(loaded, Path(weights_directory))
                        write_atomic(self.engine_path, self._build(onnx_path, shapes))
                        self.built = True
                        self._engine = self._load()
            if self._engine is None:
                raise RuntimeUnavailable(f"TensorRT could not deserialise the engine it just built ({self.engine_path})")
            self._context = self._engine.create_execution_context()
        if self._context is None:
            raise RuntimeUnavailable(f"TensorRT could not create an execution context for {self.engine_path} "
                                     "(out of GPU memory?)")
        self._dtypes = {name: self._torch_dtype(self._engine.get_tensor_dtype(name))
                        for name in (INPUT_NAME, OUTPUT_NAME)}
        self._upload = HostUploader(device)
        self._lock = threading.Lock()
        self.info = BackendInfo("tensorrt", "fp16", str(device), 1, max_batch,
                                f"TensorRT {trt.__version__}, {gpu} sm{cc[0]}{cc[1]}, profile 1/{opt_batch}/{max_batch}, "
                                f"engine {self.engine_path.name} ({'built' if self.built else 'cached'})")

    # -- engine -----------------------------------------------------------------------------------

    def _load(self) -> Any:
        """The cached engine, or None if there is none or it no longer deserialises (it is then removed)."""
        if not self.engine_path.is_file():
            return None
        try:
            engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        except Exception:  # a truncated or foreign file: some TensorRT versions raise instead of returning None
            engine = None
        if engine is None:
            self.engine_path.unlink(missing_ok=True)
        return engine

    def _build(self, onnx_path: Path, shapes: list[tuple[int, int, int, int]]) -> memoryview:
        """Parse the ONNX file and build a serialised fp16 engine, reusing and updating the timing cache."""
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeUnavailable(
                f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors or 'no error reported'}. Delete the "
                "file to re-export it; if it persists, this TensorRT lacks an operator the export uses: use "
                "TRIAGE_RUNTIME=cuda")
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, *shapes)
        config.add_optimization_profile(profile)
        blob = self.timing_cache_path.read_bytes() if self.timing_cache_path.is_file() else b""
        try:
            timing = config.create_timing_cache(blob)
        except Exception:  # a corrupt cache file: some TensorRT versions raise, others return None
            timing = None
        if timing is None:  # unreadable cache file: start afresh
            timing = config.create_timing_cache(b"")
        config.set_timing_cache(timing, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeUnavailable(
                f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} (see its log above). "
                f"Free GPU memory, lower the batch profile (max {shapes[2][0]}), or use TRIAGE_RUNTIME=cuda")
        write_atomic(self.timing_cache_path, memoryview(config.get_timing_cache().serialize()))
        return memoryview(serialized)

    def _torch_dtype(self, trt_dtype: Any) -> Any:
        torch, trt = self._torch, self._trt
        table = {trt.float32: torch.float32, trt.float16: torch.float16}
        if trt_dtype not in table:
            raise RuntimeUnavailable(f"engine {self.engine_path} has I/O type {trt_dtype}; delete it to rebuild")
        return table[trt_dtype]

    # -- execution --------------------------------------------------------------------------------

    def logits(self, batch: Any) -> NDArray[np.float32]:
        """Logits (N,) for (N, 1, S, S): float32 NumPy, or a CUDA torch tensor (GPU preprocessing)."""
        shape = tuple(batch.shape)
        if len(shape) != 4 or shape[1:] != (1, self.image_size, self.image_size):
            raise ValueError(f"expected a batch (N, 1, {self.image_size}, {self.image_size}), got {shape}")
        if shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        out = []
        with self._lock, self._torch.inference_mode(), self._torch.cuda.device(self.device):
            for start in range(0, shape[0], self.max_batch):
                out.append(self._run(self._upload(batch[start:start + self.max_batch])))
        return np.concatenate(out)

    def _run(self, x: Any) -> NDArray[np.float32]:
        torch, ctx = self._torch, self._context
        x = x.to(self._dtypes[INPUT_NAME]).contiguous()  # the engine reads linear NCHW
        if not ctx.set_input_shape(INPUT_NAME, tuple(x.shape)):
            raise RuntimeError(f"TensorRT rejected input shape {tuple(x.shape)} (profile max {self.max_batch})")
        y = torch.empty(tuple(ctx.get_tensor_shape(OUTPUT_NAME)), dtype=self._dtypes[OUTPUT_NAME], device=self.device)
        ctx.set_tensor_address(INPUT_NAME, x.data_ptr())
        ctx.set_tensor_address(OUTPUT_NAME, y.data_ptr())
        if not ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"TensorRT execution failed for a batch of {x.shape[0]} ({self.engine_path})")
        return y.reshape(x.shape[0], -1)[:, 0].float().cpu().numpy()
