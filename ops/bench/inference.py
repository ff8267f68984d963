"""``triage bench inference``: every runtime side by side against eager PyTorch fp32.

For each network, on this machine and in one run: eager PyTorch fp32 (the reference), eager fp16 on
a GPU, and every other runtime that loads here (ONNX Runtime on the CPU in fp32 and int8; CUDA
PyTorch and TensorRT on a GPU), at several batch sizes. int8 rows are the node's model where
committed calibration ranges let the node run int8, else a model quantised with ranges of random
input, for its speed only (marked so). Runs are interleaved in rounds so that a burst of load
elsewhere on the machine hits every row alike; slices/s comes from the median batch latency. Then the
per-slice time of each pipeline stage for a real 512x512 CT slice (decode, preprocess on the CPU
and, with a GPU, on the GPU, infer with the default runtime), and the inference time of a 300-slice
study with the default runtime.

Weights: the committed ones (what the node runs), or with ``--paper-width`` the papers' full-width
architectures with random weights (speed does not depend on the values), which is what the GPU
target (Deep-CT-Net at 256x256, batch 256) is stated for.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ops.bench.net import DEFAULT_SHARED

NETWORKS = ("deep-ct-net", "ct-net", "deep-cxr-net")
#: Targets of the issue, checked at the end of the run.
CPU_TARGET = 2.0
GPU_TARGET = 3.0
STUDY_SLICES = 300
STUDY_TARGET_MS = 50.0
#: The papers' widths: DenseNet-121 (k=32, 64 stem channels, FPA with backbone/4 inside) and
#: Attention-56 (64 stem channels). The committed weights are narrower (see their model cards).
PAPER_CONFIGS: dict[str, dict[str, Any]] = {
    "deep-ct-net": {"growth_rate": 32, "num_init_features": 64, "fpa_channels": 256, "fpa_mid": 0,
                    "image_size": 256},
    "deep-cxr-net": {"growth_rate": 32, "num_init_features": 64, "fpa_channels": 256, "fpa_mid": 0,
                     "image_size": 256},
    "ct-net": {"width": 64, "image_size": 256},
}


@dataclass
class Row:
    """One runtime at one batch size."""

    runtime: str
    precision: str
    batch: int
    detail: str
    run: Callable[[], Any]
    latencies: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.batch / statistics.median(self.latencies) if self.latencies else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000.0) if self.latencies else float("nan")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _random_weights(name: str, folder: Path) -> Any:
    """The paper-width network with random weights, shaped like committed weights for the runtimes."""
    import torch

    from engine.models import DEFAULT_CONFIGS, build_model
    from engine.weights import LoadedWeights

    torch.manual_seed(0)
    config = {**DEFAULT_CONFIGS[name], **PAPER_CONFIGS[name]}
    model = build_model(name, config).eval()
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes()[:4096] for p in model.parameters())).hexdigest()
    return LoadedWeights(model, name, config, {}, folder / f"{name}.safetensors", digest)


def _measure(rows: list[Row], seconds: float, rounds: int) -> None:
    for row in rows:  # warm-up: first-call allocation, CUDA graph capture, engine load
        for _ in range(3):
            row.run()
        _sync()
    for _ in range(rounds):
        for row in rows:
            deadline = time.perf_counter() + seconds / rounds
            while True:
                started = time.perf_counter()
                row.run()
                _sync()
                row.latencies.append(time.perf_counter() - started)
                if time.perf_counter() >= deadline:
                    break


def _rows_for(loaded: Any, wdir: Path, batches: list[int], gpu: bool,
              scratch: Path) -> tuple[list[Row], list[str]]:
    """The runtimes to compare for one network, and why any could not run."""
    import torch

    from engine.predictor import make_backend
    from engine.runtimes import RuntimeUnavailable
    from engine.runtimes.torch_eager import EagerBackend

    size = int(loaded.config.get("image_size", 256))
    device = "cuda" if gpu else "cpu"
    rng = np.random.default_rng(0)
    skipped: list[str] = []
    backends: list[Any] = [EagerBackend(loaded.model, device)]
    if gpu:
        backends.append(EagerBackend(loaded.model, device, "fp16"))
    for name in ("tensorrt", "cuda") if gpu else ():
        try:
            backends.append(make_backend(name, loaded, wdir, device))
        except RuntimeUnavailable as exc:
            skipped.append(f"{name}: {exc}")
    notes: dict[int, str] = {}
    try:
        backends += _onnxruntime_backends(loaded, wdir, scratch, notes, skipped)
    except RuntimeUnavailable as exc:
        skipped.append(f"onnxruntime: {exc}")
    rows = []
    for backend in backends:
        info = backend.info
        for batch in batches:
            if info.device == "cpu" and gpu and batch > 64:
                continue  # the CPU runtime on a GPU machine: small batches are enough to compare
            x = rng.standard_normal((batch, info.channels, size, size)).astype(np.float32)
            data: Any = torch.from_numpy(x).to(info.device) if info.device.startswith("cuda") else x
            detail = f"{info.device}; {info.detail}{notes.get(id(backend), '')}"
            rows.append(Row(info.runtime, info.precision, batch, detail, (lambda b=backend, d=data: b.logits(d))))
    return rows, skipped


def _onnxruntime_backends(loaded: Any, wdir: Path, scratch: Path, notes: dict[int, str],
                          skipped: list[str]) -> list[Any]:
    """ONNX Runtime fp32 and int8, whatever ``TRIAGE_CPU_PRECISION`` says.

    int8 is the node's (from committed ranges) where it may run; else, since the speed does not depend
    on the ranges' values, an int8 model from ranges of random input in ``scratch``, measured for its
    speed only: ``notes`` (by backend id) marks its rows and ``skipped`` says why the node runs fp32.
    """
    from engine.runtimes import RuntimeUnavailable
    from engine.runtimes.int8 import build_int8, cached_int8, compute_ranges
    from engine.runtimes.onnx_export import cached_onnx
    from engine.runtimes.ort_cpu import OrtBackend

    fp32 = OrtBackend.from_weights(loaded, wdir, precision="fp32")
    try:
        return [fp32, OrtBackend(cached_int8(loaded, wdir), precision="int8")]
    except RuntimeUnavailable as exc:
        reason = str(exc)
    skipped.append(f"onnxruntime int8 as the node would run it: {reason}")
    export = cached_onnx(loaded, wdir)
    size = int(loaded.config.get("image_size", 256))
    noise = np.random.default_rng(2).standard_normal((16, 1, size, size)).astype(np.float32)
    try:
        path = build_int8(export, compute_ranges(export, iter(noise)), scratch / f"{loaded.name}-speed-int8.onnx")
    except Exception as exc:  # the quantiser raises many types on a graph it cannot handle
        skipped.append(f"onnxruntime int8: quantisation failed ({exc})")
        return [fp32]
    int8 = OrtBackend(path, precision="int8")
    notes[id(int8)] = "; speed only (ranges of random input)"
    return [fp32, int8]


def _print_table(name: str, size: int, rows: list[Row]) -> dict[int, float]:
    eager = {r.batch: r.per_second for r in rows if r.runtime == "torch" and r.precision == "fp32"}
    print(f"\n{name} ({size}x{size})")
    print("| runtime | precision | batch | slices/s | p50 ms | p99 ms | vs eager fp32 | detail |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r.per_second / eager[r.batch] if eager.get(r.batch) else float("nan")
        print(f"| {r.runtime} | {r.precision} | {r.batch} | {r.per_second:.1f} | {r.percentile(50):.2f} | "
              f"{r.percentile(99):.2f} | {ratio:.2f}x | {r.detail} |")
    return eager


def _stage_table(data: Path, gpu: bool) -> None:
    """Per-slice time of decode, preprocess and infer for real 512x512 CT slices."""
    import pydicom

    from engine.imageio import dataset_to_gray
    from engine.predictor import load_predictor
    from engine.preprocess import preprocess

    files = sorted((data / "dicom" / "ct-covid19-ny-sbu").rglob("axial/*.dcm"))[:32]
    if not files:
        print(f"\n(stage table skipped: no NY-SBU axial CT under {data}/dicom)")
        return
    predictor = load_predictor("ct")
    raw = [f.read_bytes() for f in files]
    import io

    def decode() -> list[Any]:
        return [dataset_to_gray(pydicom.dcmread(io.BytesIO(b))) for b in raw]

    grays = decode()
    shape = grays[0].shape
    stages: list[tuple[str, float, str]] = []
    stages.append(("decode", _per_item(decode, len(raw)), f"pydicom + HU + lung window, {shape[0]}x{shape[1]}"))
    size = predictor.input_size
    stages.append(("preprocess (CPU, NumPy)", _per_item(lambda: [preprocess(g, size) for g in grays], len(grays)),
                   "equalise, resize, blur, standardise"))
    if gpu:
        from engine.imageio import dataset_to_hu
        from engine.preprocess_torch import preprocess_batch_torch, preprocess_hu_batch_torch

        hus = [dataset_to_hu(pydicom.dcmread(io.BytesIO(b))) for b in raw]
        stages.append(("preprocess (GPU, torch)",
                       _per_item(lambda: (preprocess_batch_torch(grays, size, "cuda"), _sync()), len(grays)),
                       f"from windowed uint8, batch of {len(grays)}"))
        stages.append(("window + preprocess (GPU, torch)",
                       _per_item(lambda: (preprocess_hu_batch_torch(hus, size, "cuda"), _sync()), len(hus)),
                       f"from HU float32 (decode stops at HU), batch of {len(hus)}"))
    batch = predictor.prepare(grays[:predictor.batch_size])
    stages.append(("infer", _per_item(lambda: predictor.predict(batch), len(batch)),
                   f"{predictor.runtime} {predictor.precision}, batch {predictor.batch_size}"))
    print(f"\nPer-slice time of each stage, real {shape[0]}x{shape[1]} CT slices ({predictor.model_name})")
    print("| stage | ms per slice | how |")
    print("|---|---|---|")
    for stage, seconds, how in stages:
        print(f"| {stage} | {seconds * 1000:.2f} | {how} |")


def _per_item(fn: Callable[[], Any], items: int, repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) / items


def _study_time(loaded: Any, wdir: Path, slices: int) -> tuple[str, float]:
    """Inference of a whole study, slices already preprocessed (on the GPU when there is one)."""
    import torch

    from engine.predictor import Predictor, auto_backend

    predictor = Predictor("ct", loaded, auto_backend(loaded, wdir))
    backend = predictor.backend
    size = predictor.input_size
    x = np.random.default_rng(1).standard_normal((slices, backend.info.channels, size, size)).astype(np.float32)
    data: Any = torch.from_numpy(x).to(predictor.device) if predictor.device.startswith("cuda") else x

    def study() -> None:
        for start in range(0, slices, predictor.batch_size):
            predictor.predict(data[start:start + predictor.batch_size])

    seconds = _per_item(study, 1, repeat=3)
    return f"{predictor.runtime} {predictor.precision} on {predictor.device}, batch {predictor.batch_size}", seconds


def run_inference_benchmark(models: list[str], batches: list[int] | None = None, seconds: float = 6.0,
                            rounds: int = 3, paper_width: bool = False, shared_data: str | None = None,
                            study_slices: int = STUDY_SLICES) -> int:
    import torch

    from engine.weights import WeightsError, load_weights, weights_dir

    from engine.runtimes import gpu_present
    from engine.runtimes.ort_cpu import available_cores

    gpu = gpu_present()
    batches = batches or ([1, 64, 256] if gpu else [1, 8, 32])
    device = torch.cuda.get_device_name(0) if gpu else f"CPU, {available_cores()} cores"
    print(f"triage bench inference: {device}; torch {torch.__version__}; interleaved in {rounds} rounds of "
          f"{seconds / rounds:.1f} s per row; weights: {'paper width, random' if paper_width else 'committed'}")
    verdicts: list[str] = []
    scratch = Path(tempfile.mkdtemp(prefix="triage-bench-inference-"))
    try:
        study_loaded: tuple[Any, Path] | None = None
        for name in models:
            try:
                if paper_width:
                    loaded, wdir = _random_weights(name, scratch), scratch
                else:
                    loaded, wdir = load_weights(name), weights_dir()
            except WeightsError as exc:
                print(f"\n{name}: skipped ({exc})")
                continue
            if study_loaded is None and name in ("deep-ct-net", "ct-net"):
                study_loaded = (loaded, wdir)
            rows, skipped = _rows_for(loaded, wdir, batches, gpu, scratch)
            _measure(rows, seconds, rounds)
            eager = _print_table(name, int(loaded.config.get("image_size", 256)), rows)
            for reason in skipped:
                print(f"  not measured: {reason}")
            if not gpu:  # the target is the default runtime's: what auto picks here, in its precision
                from engine.predictor import auto_backend

                info = auto_backend(loaded, wdir).info
                ratios = [r.per_second / eager[r.batch] for r in rows
                          if (r.runtime, r.precision) == (info.runtime, info.precision) and eager.get(r.batch)]
                worst, best = (min(ratios), max(ratios)) if ratios else (float("nan"), float("nan"))
                verdicts.append(f"{name}: default runtime ({info.runtime}) {info.precision} {worst:.2f}x-{best:.2f}x "
                                f"eager fp32 (target >= {CPU_TARGET}x): {'met' if worst >= CPU_TARGET else 'NOT met'}")
            else:
                top = max(batches)
                best_row = max((r for r in rows if r.batch == top), key=lambda r: r.per_second)
                ratio = best_row.per_second / eager[top]
                verdicts.append(f"{name}: best runtime at batch {top} {best_row.runtime} {best_row.precision} "
                                f"{ratio:.2f}x eager fp32 (target >= {GPU_TARGET}x for deep-ct-net at 256x256): "
                                f"{'met' if ratio >= GPU_TARGET else 'NOT met'}")
        data = Path(shared_data) if shared_data else Path(os.environ.get("TRIAGE_SHARED_DATA", DEFAULT_SHARED))
        _stage_table(data, gpu)
        if study_loaded is not None:
            how, seconds_study = _study_time(*study_loaded, study_slices)
            ms = seconds_study * 1000
            verdict = "met" if ms < STUDY_TARGET_MS else "NOT met"
            target = f" (GPU target < {STUDY_TARGET_MS:.0f} ms: {verdict})" if gpu else ""
            print(f"\n{study_slices}-slice CT study, inference only ({study_loaded[0].name}, {how}): "
                  f"{ms:.1f} ms{target}")
        print("\nTargets:")
        for line in verdicts:
            print(f"  {line}")
        return 0
    finally:  # the exports made for the rows (int8, paper width) go with it
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - convenience for python -m
    return run_inference_benchmark(list(NETWORKS))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
