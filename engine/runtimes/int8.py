"""Static int8 models for ONNX Runtime on the CPU, built at first use from committed activation ranges.

The int8 model is derived, never committed. What is committed is ``NAME.int8.json`` beside the
weights: the activation range of every tensor (what ONNX Runtime's calibrator computed from train
images, tensor name -> ``[min, max]``), the sha256 of the fp32 grey export they were computed for,
how they were computed, and the accuracy check that let them be written (``triage calibrate``,
:mod:`engine.calibrate`, writes the file only when int8 agrees with fp32 on val within its bounds).
From the fp32 export (:func:`engine.runtimes.onnx_export.cached_onnx`) and that file alone, no
images, :func:`cached_int8` makes the int8 model and caches it beside the fp32 export as
``NAME-<export sha256[:16]>-<ranges sha256[:16]>-int8.onnx``. The ranges hold for the weights they
were computed from (their sha256) and for the export's graph (:func:`graph_digest`: operators and
tensor names, not the file's bytes, which differ between machines), so an export made on another
machine from the same weights keeps them.

The recipe (:data:`CALIBRATION`; measured on a 2-core AVX-512 VNNI EPYC, two parallel
single-threaded runs as :class:`engine.runtimes.ort_cpu.OrtBackend` runs them):

* ONNX Runtime's quantisation pre-processing (shape inference, basic graph optimisation), then QDQ
  format (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into QLinearConv,
  QLinearConcat and friends) with per-channel symmetric int8 weights, through ``quantize_static``
  reading the ranges as its calibration cache.
* uint8 activations: deep-ct-net +12 % images/s over fp32 at batch 1, +22 % at 8, +27 % at 32.
  int8 activations were slower than fp32 (154 against 194 images/s at batch 8) and are not used.
* only the DenseNet backbones are quantised: the heads behind them (feature pyramid attention,
  concatenation of parts, fully connected layers) run at 8x8, cost nothing, and quantised per tensor
  they moved deep-cxr-net's val AUC from 0.935 to 0.901 (0.930 with the heads in fp32). By the same
  rule the backbone's own 8x8 stage (last dense block, final norm) stays fp32: deep-ct-net's max
  |Δprob| on val fell from 0.1006 to 0.0877, within :data:`engine.calibrate.BOUNDS`.
  BatchNormalization stays fp32 too: ONNX Runtime has no int8 kernel for it, and quantising its
  1-D scale falls back to one scale for all channels.
* ranges by ONNX Runtime's percentile calibrator (99.999th percentile of |x|, symmetric) over all
  train images, in chunks of :data:`CALIBRATION_CHUNK`: min-max ranges widen with every image added
  (deep-ct-net, all 425 train images: mean |logit change| 0.30 against 0.19).

int8 runs only on CPUs with VNNI (:func:`cpu_has_vnni`): elsewhere ONNX Runtime's uint8 x int8
kernels can saturate, and the accuracy check was run on a VNNI CPU; those fall back to fp32.

The pre-processing and the quantiser are deterministic for one onnxruntime version; ranges naming
tensors the graph does not have (another onnxruntime renamed them) make the build fail rather than
quantise part of the graph.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.runtimes.base import RuntimeUnavailable
from engine.runtimes.onnx_export import cache_dir, cached_onnx, graph_digest

__all__ = ["CALIBRATION", "RANGES_FORMAT", "build_int8", "cached_int8", "compute_ranges", "cpu_has_vnni", "ranges_digest",
           "ranges_document", "ranges_path", "read_ranges", "write_ranges"]

#: Version of the ``NAME.int8.json`` layout (2: the export is named by its graph digest too).
RANGES_FORMAT = 2
#: How the ranges are computed and the model quantised; recorded in every ranges file. ``scope``: only
#: nodes whose name holds it are quantised where the graph has any (the DenseNet backbones; the rest,
#: at 8x8, stays fp32), else every node, except those named by ``fp32_scope`` (the backbone's own 8x8
#: stage: the last dense block and its norm); ``fp32_op_types`` are never quantised.
CALIBRATION: dict[str, Any] = {"method": "Percentile", "percentile": 99.999, "symmetric": True,
                               "format": "QDQ", "weights": "QInt8, per channel", "activations": "QUInt8",
                               "scope": "/backbone/", "fp32_scope": ["/backbone/denseblock4/", "/backbone/norm5"],
                               "fp32_op_types": ["BatchNormalization"]}
#: Images per calibration run: the histograms are merged run by run, so this fixes the result too.
CALIBRATION_CHUNK = 16


def ranges_path(name: str, weights_directory: Path) -> Path:
    """``NAME.int8.json`` in the weights folder."""
    return weights_directory / f"{name}.int8.json"


def ranges_digest(doc: Mapping[str, Any]) -> str:
    """sha256 of what the int8 model is made from besides the export: the ranges and the recipe."""
    canonical = json.dumps({"ranges": doc["ranges"], "calibration": doc["calibration"]["recipe"]}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def read_ranges(name: str, weights_directory: Path) -> dict[str, Any]:
    """The committed ranges file of ``name``, checked for form and for a passed accuracy check.

    Raises
    ------
    RuntimeUnavailable
        If there is none, it is unreadable, for another model, or its accuracy check did not pass;
        the message says why and how to make a new one.
    """
    path = ranges_path(name, weights_directory)
    remake = f"make it with 'triage calibrate {name}'"
    if not path.is_file():
        raise RuntimeUnavailable(f"no int8 calibration ranges ({path} not found; {remake})")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        ranges, sha = doc["ranges"], doc["fp32_export"]["graph_sha256"]
        weights_sha = doc["weights_sha256"]
        passed, recipe = doc["accuracy"]["passed"], doc["calibration"]["recipe"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeUnavailable(f"int8 calibration ranges {path} are unreadable ({exc}); {remake}") from exc
    if doc.get("model") != name or doc.get("format") != RANGES_FORMAT:
        raise RuntimeUnavailable(f"{path} is not format-{RANGES_FORMAT} ranges of {name}; {remake}")
    if passed is not True:
        raise RuntimeUnavailable(f"{path} records a failed accuracy check; {remake}")
    if recipe != CALIBRATION:
        raise RuntimeUnavailable(f"{path} was made with another recipe ({recipe}); {remake}")
    if not isinstance(sha, str) or not isinstance(weights_sha, str) or not isinstance(ranges, dict) or not all(
            isinstance(v, list) and len(v) == 2 and all(isinstance(b, (int, float)) for b in v) and v[0] <= v[1]
            for v in ranges.values()):
        raise RuntimeUnavailable(f"{path} holds malformed ranges; {remake}")
    return doc


def ranges_document(loaded: Any, fp32_path: Path, ranges: Mapping[str, Sequence[float]], images: int,
                    accuracy: Mapping[str, Any]) -> dict[str, Any]:
    """The ``NAME.int8.json`` content for ranges computed on ``images`` train images of ``fp32_path``.

    ``accuracy`` is the check of :func:`engine.calibrate.accuracy_check`; its ``passed`` decides
    whether :func:`read_ranges` accepts the file.
    """
    import onnxruntime

    from engine.weights import file_sha256, git_commit

    return {"model": loaded.name, "format": RANGES_FORMAT, "weights_sha256": loaded.sha256,
            "fp32_export": {"file": fp32_path.name, "sha256": file_sha256(fp32_path),
                            "graph_sha256": graph_digest(fp32_path)},
            "calibration": {"recipe": CALIBRATION, "split": "train", "images": images,
                            "preprocessing": "engine.preprocess.preprocess, 1 channel"},
            "accuracy": dict(accuracy), "onnxruntime": onnxruntime.__version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"), "code_version": git_commit(),
            "ranges": {name: [float(lo), float(hi)] for name, (lo, hi) in sorted(ranges.items())}}


def write_ranges(doc: Mapping[str, Any], weights_directory: Path) -> Path:
    """Write ``doc`` as ``NAME.int8.json`` atomically (a reader never sees half a file)."""
    path = ranges_path(doc["model"], weights_directory)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI, where uint8 x int8 dot products do not saturate.

    Without it (SSE, AVX2, AVX-512F alone) x86 int8 convolutions go through VPMADDUBSW, whose 16-bit
    intermediate sums saturate; a model validated on a VNNI CPU can then lose accuracy in ways no
    check here would see. Read from /proc/cpuinfo; False where that cannot be read (not Linux).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").split()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def cached_int8(loaded: Any, weights_directory: Path, fp32_path: Path | None = None) -> Path:
    """The int8 model of these weights, built from the fp32 export and the committed ranges at first use.

    Raises
    ------
    RuntimeUnavailable
        If the ranges are missing or refused (see :func:`read_ranges`), or were computed for other
        weights or another graph than the current export's (the weights, or the exporter, changed).
    """
    from engine.weights import file_sha256

    doc = read_ranges(loaded.name, weights_directory)
    name = ranges_path(loaded.name, weights_directory).name
    remake = f"make new ranges with 'triage calibrate {loaded.name}'"
    if doc["weights_sha256"] != loaded.sha256:
        raise RuntimeUnavailable(f"{name} was computed for the weights with sha256 {doc['weights_sha256'][:16]}, "
                                 f"{loaded.path.name} has {loaded.sha256[:16]}; {remake}")
    fp32_path = fp32_path or cached_onnx(loaded, weights_directory)
    expected, graph = doc["fp32_export"]["graph_sha256"], graph_digest(fp32_path)
    if graph != expected:
        raise RuntimeUnavailable(
            f"{name} was computed for an fp32 export whose graph has sha256 {expected[:16]}, the current export "
            f"{fp32_path.name} has {graph[:16]} (the exporter changed); {remake}")
    actual = file_sha256(fp32_path)
    if not cpu_has_vnni():
        raise RuntimeUnavailable(
            "this CPU has no VNNI (avx512_vnni or avx_vnni): ONNX Runtime's uint8 x int8 kernels can saturate "
            "on it, and the ranges' accuracy check ran on a VNNI CPU")
    path = cache_dir(weights_directory) / f"{loaded.name}-{actual[:16]}-{ranges_digest(doc)[:16]}-int8.onnx"
    if not path.is_file():
        try:
            build_int8(fp32_path, doc["ranges"], path)
        except RuntimeUnavailable:
            raise
        except Exception as exc:  # the quantiser raises many types on a graph it cannot handle
            raise RuntimeUnavailable(f"int8 quantisation of {fp32_path.name} failed ({exc})") from exc
    return path


def build_int8(fp32_path: Path, ranges: Mapping[str, Sequence[float]], path: Path) -> Path:
    """Quantise the fp32 export with ``ranges`` (no images) and write it atomically to ``path``.

    Raises
    ------
    RuntimeUnavailable
        If ``ranges`` name tensors the prepared graph does not have.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    method = CalibrationMethod[CALIBRATION["method"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tempfile.TemporaryDirectory(prefix="triage-int8-") as work:
        prepared = _prepare(fp32_path, Path(work))
        unknown = set(ranges) - _tensor_names(prepared)
        if unknown:
            raise RuntimeUnavailable(f"{len(unknown)} calibrated tensors are not in the prepared graph of "
                                     f"{fp32_path.name} (e.g. {sorted(unknown)[0]}); recalibrate with this onnxruntime")
        table = TensorsData(method, {name: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
                                     for name, (lo, hi) in ranges.items()})
        cache = Path(work) / "ranges.json"
        save_tensors_data(table, cache)
        try:
            quantize_static(str(prepared), str(tmp), None, calibration_cache_path=str(cache), calibrate_method=method,
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_quantize=_scope(prepared),
                            op_types_to_quantize=[t for t in _op_types() if t not in CALIBRATION["fp32_op_types"]])
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def compute_ranges(fp32_path: Path, images: Iterable[NDArray[np.float32]]) -> dict[str, list[float]]:
    """Activation ranges of the fp32 export over preprocessed images (each (1, S, S), the grey input).

    Images go through ONNX Runtime's calibrator in fixed chunks of :data:`CALIBRATION_CHUNK`, in the
    order given; the result is what :func:`build_int8` takes.
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    class _Once(CalibrationDataReader):
        def __init__(self, batch: NDArray[np.float32]) -> None:
            self._batch: NDArray[np.float32] | None = batch

        def get_next(self) -> dict[str, NDArray[np.float32]] | None:
            batch, self._batch = self._batch, None
            return None if batch is None else {"input": batch}

    # (the calibrator prints a line per chunk: dropped)
    with tempfile.TemporaryDirectory(prefix="triage-int8-") as work, contextlib.redirect_stdout(io.StringIO()):
        prepared = _prepare(fp32_path, Path(work))
        calibrator = create_calibrator(prepared, _op_types(), augmented_model_path=str(Path(work) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod[CALIBRATION["method"]],
                                       extra_options={"percentile": CALIBRATION["percentile"],
                                                      "symmetric": CALIBRATION["symmetric"]})
        chunk: list[NDArray[np.float32]] = []
        for image in images:
            chunk.append(np.asarray(image, np.float32))
            if len(chunk) == CALIBRATION_CHUNK:
                calibrator.collect_data(_Once(np.stack(chunk)))
                chunk = []
        if chunk:
            calibrator.collect_data(_Once(np.stack(chunk)))
        table = calibrator.compute_data()
    return {name: [float(np.float32(np.asarray(td.range_value[0]).reshape(-1)[0])),
                   float(np.float32(np.asarray(td.range_value[1]).reshape(-1)[0]))]
            for name, td in sorted(table.items())}


def _prepare(fp32_path: Path, work: Path) -> Path:
    """ONNX Runtime's quantisation pre-processing of the export, into ``work``."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = work / "prepared.onnx"
    quant_pre_process(str(fp32_path), str(prepared))
    return prepared


def _scope(path: Path) -> list[str] | None:
    """Names of the nodes to quantise (``None``: all of them), see :data:`CALIBRATION`."""
    import onnx

    inside = [node.name for node in onnx.load(str(path)).graph.node if CALIBRATION["scope"] in node.name
              and not any(part in node.name for part in CALIBRATION["fp32_scope"])]
    return inside or None


def _tensor_names(path: Path) -> set[str]:
    import onnx

    graph = onnx.load(str(path)).graph
    return {name for node in graph.node for name in node.output} | {i.name for i in graph.input}


def _op_types() -> list[str]:
    """Every operator the quantiser handles (what ``quantize_static`` calibrates by default)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))
