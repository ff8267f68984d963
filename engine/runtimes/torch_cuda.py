"""PyTorch on a GPU: fp16, channels_last, one CUDA graph per batch bucket.

Why each setting (all of them keep the trained network and change only how it is executed):

* **grey input folded into the stem** (:mod:`engine.runtimes.grey`): one input channel, a third of
  the upload and of the stem's multiply-adds.
* **fp16**: tensor cores; the logits move by ~1e-3 relative (the CUDA test holds them to 2e-2).
* **channels_last** (NHWC): the layout cuDNN's tensor-core convolutions want; without it every
  convolution is bracketed by layout transposes.
* **buckets**: a batch is padded up to the next of :data:`BUCKETS` (capped at ``max_batch``), so the
  backend only ever sees a handful of shapes. That is what makes CUDA graphs (one per shape) and
  ``cudnn.benchmark`` (one algorithm search per shape) pay off; rows past ``N`` are computed and
  discarded (eval-mode networks treat every row independently). Batches above ``max_batch`` are
  split.
* **CUDA graphs** (default): DenseNet-121 launches ~600 small kernels per forward; at the batch sizes
  a worker sends, launch overhead and Python dispatch dominate. A graph replays the whole forward as
  one launch. Captured lazily, once per bucket, after warm-up iterations on a side stream (cuDNN
  picks its algorithms then, outside the capture); all graphs share one memory pool, which is safe
  because they are replayed one at a time and each result is read before the next replay.
* **torch.compile** (``compile=True``, instead of graphs): Inductor fuses BatchNorm/ReLU/concat
  chains and, in ``max-autotune-no-cudagraphs`` mode, benchmarks Triton kernels per shape. It can
  beat graphs on memory-bound layers, but costs minutes of compilation per bucket at start-up, needs
  Triton and a C compiler on the node, and recompiles for every new shape (the buckets bound that).
  Its own CUDA graphs are off because this backend's bucketing already decides the shapes and two
  graph managers in one process fight over memory pools. Graphs are the default because a worker
  that restarts must be serving in seconds.

The backend also runs on the CPU (``device="cpu", precision="fp32", cuda_graphs=False``): no GPU
speed-up there, but the folding, bucketing, padding and splitting are the same code, so the tests
check them on a machine without a GPU.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from engine.runtimes.base import BackendInfo, RuntimeUnavailable
from engine.runtimes.grey import fold_grey_input

__all__ = ["BUCKETS", "CudaBackend", "HostUploader", "bucket_for", "bucket_sizes", "resolve_cuda_device"]

#: Batch sizes the backend pads to. 1 for single radiographs, 8 for small remainders, then powers of two
#: up to a CT series' worth of slices; sizes above ``max_batch`` are dropped and ``max_batch`` added.
BUCKETS: tuple[int, ...] = (1, 8, 32, 64, 128, 256)
#: Forward passes run on a side stream before a graph is captured (cuDNN algorithm search, lazy init).
WARMUP_ITERATIONS = 3


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """The buckets in use for ``max_batch``: those of :data:`BUCKETS` below it, then ``max_batch``."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    return tuple(sorted({b for b in BUCKETS if b < max_batch} | {max_batch}))


def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds ``n`` rows (``n`` must not exceed the largest)."""
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"{n} rows exceed the largest bucket {buckets[-1]}; split the batch first")


def resolve_cuda_device(device: str) -> torch.device:
    """``cuda`` or ``cuda:N`` as a device with an index, or RuntimeUnavailable saying what is missing."""
    if not torch.cuda.is_available():
        raise RuntimeUnavailable(
            f"no CUDA GPU is visible to PyTorch (device {device!r}, torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}): install a CUDA build of torch and the NVIDIA driver, check "
            "CUDA_VISIBLE_DEVICES, or use TRIAGE_RUNTIME=onnxruntime on this machine")
    dev = torch.device(device)
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise RuntimeUnavailable(f"{device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) are "
                                 "visible; check CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", index)


class HostUploader:
    """Moves a batch to the device: float32 NumPy through a reused pinned buffer, tensors as they are.

    Pinned (page-locked) memory lets the copy run asynchronously on the current stream; the buffer is
    reused, and an event recorded after each copy is awaited before the buffer is written again, so a
    copy still in flight never sees its source change.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pinned: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

    def __call__(self, batch: Any) -> torch.Tensor:
        """``batch`` as a float32 tensor on the device (a torch tensor elsewhere is moved too)."""
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, torch.float32)
        host = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.device.type != "cuda":
            return host
        n = host.numel()
        if self._copied is not None:
            self._copied.synchronize()  # the previous copy has read the buffer
        if self._pinned is None or self._pinned.numel() < n:
            self._pinned = torch.empty(n, dtype=torch.float32, pin_memory=True)
        staged = self._pinned[:n].view(host.shape)
        staged.copy_(host)
        out = staged.to(self.device, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record(torch.cuda.current_stream(self.device))
        return out


class _Graph:
    """One captured forward pass for one bucket: write ``static_in``, replay, read ``static_out``."""

    def __init__(self, graph: torch.cuda.CUDAGraph, static_in: torch.Tensor, static_out: torch.Tensor) -> None:
        self.graph, self.static_in, self.static_out = graph, static_in, static_out


class CudaBackend:
    """The folded (one-channel) network in PyTorch, bucketed batches, CUDA graphs or torch.compile.

    Parameters
    ----------
    loaded
        :class:`engine.weights.LoadedWeights`; its fp32 module is copied, never modified.
    device
        ``cuda``, ``cuda:N`` or ``cpu`` (CPU: ``precision="fp32"`` and ``cuda_graphs=False``).
    precision
        ``fp16`` (CUDA only) or ``fp32``.
    channels_last
        Run convolutions in NHWC layout.
    cuda_graphs
        Capture one CUDA graph per bucket (CUDA only; ignored when ``compile`` is set).
    compile
        Wrap the module in ``torch.compile(mode="max-autotune-no-cudagraphs")`` instead of graphs.
    max_batch
        Largest batch run at once (also the batch the worker is told to send).

    Raises
    ------
    RuntimeUnavailable
        ``device`` is a CUDA device and PyTorch sees no GPU.
    ValueError
        A setting that cannot work on the device (fp16 or graphs on the CPU, an unknown precision).
    """

    def __init__(self, loaded: Any, device: str = "cuda", *, precision: str = "fp16", channels_last: bool = True,
                 cuda_graphs: bool = True, compile: bool = False, max_batch: int = 256) -> None:
        if precision not in ("fp16", "fp32"):
            raise ValueError(f"precision must be fp16 or fp32, got {precision!r}")
        if device.startswith("cuda"):
            dev = resolve_cuda_device(device)
        else:
            dev = torch.device(device)
            if precision == "fp16":
                raise ValueError(f"fp16 runs on CUDA only; on {device!r} pass precision='fp32'")
            if cuda_graphs and not compile:
                raise ValueError(f"CUDA graphs need a CUDA device; on {device!r} pass cuda_graphs=False")
        self.device = dev
        self.image_size = int(loaded.config.get("image_size", 256))
        self.buckets = bucket_sizes(max_batch)
        self.max_batch = max_batch
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        self._format = torch.channels_last if channels_last else torch.contiguous_format
        self._use_graphs = cuda_graphs and not compile and dev.type == "cuda"
        self._graphs: dict[int, _Graph] = {}
        self._pool: Any = None
        self._lock = threading.Lock()
        self._upload = HostUploader(dev)

        module: nn.Module = fold_grey_input(loaded.model).to(dev, self._dtype).to(memory_format=self._format).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.module = module
        self._forward: Any = module
        if dev.type == "cuda":
            # Fixed shapes (the buckets): searching cuDNN's algorithms once per shape pays off.
            torch.backends.cudnn.benchmark = True
        if compile:
            self._forward = torch.compile(module, mode="max-autotune-no-cudagraphs", dynamic=False)

        how = ("CUDA graphs per bucket" if self._use_graphs
               else "torch.compile max-autotune-no-cudagraphs" if compile else "no graphs")
        layout = "channels_last" if channels_last else "NCHW"
        self.info = BackendInfo("cuda", precision, str(dev), 1, max_batch,
                                f"{layout}, {how} {self.buckets}, grey input folded into the stem")

    # -- execution ---------------------------------------------------------------------------------

    def logits(self, batch: Any) -> NDArray[np.float32]:
        """Logits (N,) for (N, 1, S, S): float32 NumPy, or a torch tensor (ideally already on the device)."""
        shape = tuple(batch.shape)
        if len(shape) != 4 or shape[1:] != (1, self.image_size, self.image_size):
            raise ValueError(f"expected a batch (N, 1, {self.image_size}, {self.image_size}), got {shape}")
        n = shape[0]
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        out = []
        with self._lock, torch.inference_mode():
            for start in range(0, n, self.max_batch):
                x = self._upload(batch[start:start + self.max_batch])
                out.append(self._run(x))
        return np.concatenate(out)

    def _run(self, x: torch.Tensor) -> NDArray[np.float32]:
        """One chunk of at most ``max_batch`` rows, padded to its bucket."""
        n = x.shape[0]
        b = bucket_for(n, self.buckets)
        if self._use_graphs:
            g = self._graphs.get(b) or self._capture(b)
            g.static_in[:n].copy_(x)
            g.graph.replay()
            y = g.static_out[:n, 0]
        else:
            padded = torch.zeros((b, 1, self.image_size, self.image_size), dtype=self._dtype, device=self.device)
            padded[:n].copy_(x)
            y = self._forward(padded.contiguous(memory_format=self._format))[:n, 0]
        return y.float().cpu().numpy()

    def _capture(self, b: int) -> _Graph:
        """Warm up on a side stream, then capture the bucket-``b`` forward into a CUDA graph."""
        static_in = torch.zeros((b, 1, self.image_size, self.image_size), dtype=self._dtype,
                                device=self.device).contiguous(memory_format=self._format)
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(WARMUP_ITERATIONS):
                self.module(static_in)
        current.wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = self.module(static_in)
        self._graphs[b] = _Graph(graph, static_in, static_out)
        return self._graphs[b]
