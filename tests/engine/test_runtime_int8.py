"""int8 for ONNX Runtime on the CPU: built from ranges alone (no images), agreeing with fp32 on real
CT slices, cached by export and ranges hash, refused with a logged reason when the ranges do not fit
the current weights or export graph (but kept for another CPU's export of the same graph), and chosen
by ``TRIAGE_CPU_PRECISION``."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from engine.calibrate import BOUNDS, accuracy_check, calibrate_model
from engine.data import covid_ct_samples
from engine.imageio import read_image
from engine.predictor import Predictor, load_predictor
from engine.preprocess import preprocess
from engine.runtimes.int8 import (build_int8, cached_int8, compute_ranges, cpu_has_vnni, ranges_digest,
                                  ranges_document, ranges_path, read_ranges, write_ranges)
from engine.runtimes.onnx_export import cached_onnx
from engine.runtimes.ort_cpu import OrtBackend
from engine.weights import card_path, file_sha256, load_weights


requires_vnni = pytest.mark.skipif(not cpu_has_vnni(), reason="int8 runs only on CPUs with VNNI "
                                   "(avx512_vnni or avx_vnni; engine.runtimes.int8.cpu_has_vnni)")


def _grey(paths: list[Path], size: int) -> np.ndarray:
    return np.stack([preprocess(read_image(p), size, 1) for p in paths])


def _spread(samples: list, n: int) -> list[Path]:
    return [samples[int(i)].path for i in np.linspace(0, len(samples) - 1, n)]


@pytest.fixture(scope="session")
def calibrated_deep_ct_net(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights folder holding the committed deep-ct-net and ranges that ``triage calibrate`` computed
    for it from 32 train images (the command uses all 425) and wrote after checking them on val."""
    committed = load_weights("deep-ct-net")
    export = cached_onnx(committed, committed.path.parent)  # the shared export cache: exported once
    d = tmp_path_factory.mktemp("weights")
    for f in (committed.path, card_path("deep-ct-net", committed.path.parent)):
        (d / f.name).symlink_to(f)
    (d / ".onnx-cache").mkdir()
    (d / ".onnx-cache" / export.name).symlink_to(export)
    log: list[str] = []
    assert calibrate_model("deep-ct-net", d, max_images=32, log=log.append), "\n".join(log)
    return d


@requires_vnni
def test_int8_from_committed_ranges_alone_agrees_with_fp32_on_real_ct(calibrated_deep_ct_net: Path,
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    d = calibrated_deep_ct_net
    monkeypatch.delenv("TRIAGE_CPU_PRECISION", raising=False)
    monkeypatch.setenv("TRIAGE_SHARED_DATA", str(tmp_path))  # no images to be had while int8 is built
    int8 = load_predictor("ct", weights_directory=d)
    assert (int8.runtime, int8.precision, int8.model_name) == ("onnxruntime", "int8", "deep-ct-net")
    built = cached_int8(load_weights("deep-ct-net", d), d)
    ops = [node.op_type for node in onnx.load(str(built)).graph.node]
    assert ops.count("QuantizeLinear") > 100 and "Gemm" in ops, "backbone quantised, classifier left fp32"
    monkeypatch.setenv("TRIAGE_CPU_PRECISION", "fp32")
    fp32 = load_predictor("ct", weights_directory=d)
    assert fp32.precision == "fp32"
    monkeypatch.delenv("TRIAGE_SHARED_DATA")
    val = covid_ct_samples("val")
    x = _grey(_spread(val, 16), int8.input_size)
    p32, p8 = fp32.predict(x), int8.predict(x)
    assert float(np.max(np.abs(p8 - p32))) <= BOUNDS["max_prob_change"]
    assert float(np.mean(np.abs(p8 - p32))) <= BOUNDS["mean_prob_change"]


@pytest.fixture()
def tiny_dir(tiny_weights: Path, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the tiny weights (each test writes its own ranges file)."""
    d = tmp_path / "weights"
    shutil.copytree(tiny_weights, d, ignore=shutil.ignore_patterns(".onnx-cache"))
    yield d


def _calibrated(d: Path, ct_images: list[Path], first: int = 0, last: int = 8, **changes: object) -> dict:
    """Ranges of the tiny deep-ct-net on real slices, checked on them as ``triage calibrate`` checks val,
    written as its ranges file (with ``changes`` to the document). ``ct_images``: four COVID, four not."""
    loaded = load_weights("deep-ct-net", d)
    fp32 = cached_onnx(loaded, d)
    x = _grey(ct_images[first:last], 64)
    ranges = compute_ranges(fp32, iter(x))
    int8 = build_int8(fp32, ranges, d / "checked-int8.onnx")
    p32, p8 = (Predictor("ct", loaded, OrtBackend(path, threads=1)).predict(x) for path in (fp32, int8))
    check = accuracy_check(np.array([1, 1, 1, 1, 0, 0, 0, 0][first:last]), p32, p8, 0.5)
    assert check["passed"], check
    doc = {**ranges_document(loaded, fp32, ranges, len(x), check), **changes}
    write_ranges(doc, d)
    return doc


@requires_vnni
def test_matching_ranges_give_int8_built_once_and_cached_by_both_hashes(tiny_dir: Path, ct_images: list[Path],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIAGE_CPU_PRECISION", raising=False)
    doc = _calibrated(tiny_dir, ct_images)
    assert read_ranges("deep-ct-net", tiny_dir)["ranges"] == doc["ranges"]
    assert json.loads(ranges_path("deep-ct-net", tiny_dir).read_text())["calibration"]["images"] == 8
    loaded = load_weights("deep-ct-net", tiny_dir)
    backend = OrtBackend.from_weights(loaded, tiny_dir)
    assert backend.info.precision == "int8" and backend.info.channels == 1
    path = cached_int8(loaded, tiny_dir)
    assert file_sha256(cached_onnx(loaded, tiny_dir))[:16] in path.name and ranges_digest(doc)[:16] in path.name
    stamp = path.stat().st_mtime_ns
    assert cached_int8(loaded, tiny_dir) == path and path.stat().st_mtime_ns == stamp
    predictor = load_predictor("ct", "onnxruntime", weights_directory=tiny_dir)
    assert predictor.precision == "int8"
    scores = predictor.predict_images([read_image(p) for p in ct_images[:3]])
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
    _calibrated(tiny_dir, ct_images, 1, 7)  # other ranges, another file
    assert cached_int8(loaded, tiny_dir) != path


def test_ranges_of_another_graph_or_other_weights_are_refused_and_fp32_runs(tiny_dir: Path, ct_images: list[Path],
                                                                           caplog: pytest.LogCaptureFixture,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_weights("deep-ct-net", tiny_dir)
    for changes, said in (({"fp32_export": {"file": "old.onnx", "sha256": "0" * 64, "graph_sha256": "0" * 64}},
                           "exporter changed"),
                          ({"weights_sha256": "1" * 64}, "weights with sha256 1111111111111111")):
        _calibrated(tiny_dir, ct_images, **changes)
        for precision in ("auto", "int8"):
            monkeypatch.setenv("TRIAGE_CPU_PRECISION", precision)
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="engine.runtimes"):
                backend = OrtBackend.from_weights(loaded, tiny_dir)
            assert backend.info.precision == "fp32"
            refusal = [r for r in caplog.records if r.getMessage().startswith("engine.runtimes.int8_refused:")]
            assert refusal and refusal[0].levelno == logging.WARNING
            message = refusal[0].getMessage()
            assert said in message and "triage calibrate deep-ct-net" in message, message
    doc = _calibrated(tiny_dir, ct_images)
    _calibrated(tiny_dir, ct_images, accuracy={**doc["accuracy"], "passed": False})
    monkeypatch.setenv("TRIAGE_CPU_PRECISION", "auto")
    assert OrtBackend.from_weights(loaded, tiny_dir).info.precision == "fp32", "a failed check is refused too"


@requires_vnni
def test_an_export_whose_folded_values_differ_in_the_last_bits_keeps_its_ranges(tiny_dir: Path,
                                                                                ct_images: list[Path],
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in for another machine's export of the same weights (an AMD EPYC's had other bytes than
    an Intel Xeon's, from one weights file and torch): the same graph, its 4-D initializers one ulp apart."""
    monkeypatch.delenv("TRIAGE_CPU_PRECISION", raising=False)
    _calibrated(tiny_dir, ct_images)
    loaded = load_weights("deep-ct-net", tiny_dir)
    export = cached_onnx(loaded, tiny_dir)
    before = file_sha256(export)
    model = onnx.load(str(export))
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 4:
            values = onnx.numpy_helper.to_array(init).copy()
            values.flat[::7] = np.nextafter(values.flat[::7], np.float32(np.inf))
            init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
    onnx.save(model, str(export))
    assert file_sha256(export) != before
    assert OrtBackend.from_weights(loaded, tiny_dir).info.precision == "int8"
    assert before[:16] not in cached_int8(loaded, tiny_dir).name, "the int8 cache follows the export's bytes"


@requires_vnni
def test_cpu_precision_setting(tiny_dir: Path, ct_images: list[Path], monkeypatch: pytest.MonkeyPatch,
                               caplog: pytest.LogCaptureFixture) -> None:
    loaded = load_weights("deep-ct-net", tiny_dir)
    monkeypatch.delenv("TRIAGE_CPU_PRECISION", raising=False)
    with caplog.at_level(logging.INFO, logger="engine.runtimes"):
        assert OrtBackend.from_weights(loaded, tiny_dir).info.precision == "fp32"  # never calibrated
    assert [r.levelno for r in caplog.records if r.name == "engine.runtimes"] == [logging.INFO], \
        "auto without ranges says why at info level, not as a warning"
    _calibrated(tiny_dir, ct_images)
    assert OrtBackend.from_weights(loaded, tiny_dir).info.precision == "int8"
    monkeypatch.setenv("TRIAGE_CPU_PRECISION", "fp32")
    assert OrtBackend.from_weights(loaded, tiny_dir).info.precision == "fp32"
    assert load_predictor("ct", weights_directory=tiny_dir).precision == "fp32"
    monkeypatch.setenv("TRIAGE_CPU_PRECISION", "int4")
    with pytest.raises(ValueError, match="TRIAGE_CPU_PRECISION"):
        OrtBackend.from_weights(loaded, tiny_dir)


def test_a_cpu_without_vnni_runs_fp32_with_the_reason(tiny_dir: Path, ct_images: list[Path],
                                                     caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.runtimes.int8 as int8_module

    _calibrated(tiny_dir, ct_images)
    monkeypatch.setattr(int8_module, "cpu_has_vnni", lambda: False)  # what /proc/cpuinfo says on AVX2 alone
    monkeypatch.setenv("TRIAGE_CPU_PRECISION", "int8")
    with caplog.at_level(logging.INFO, logger="engine.runtimes"):
        backend = OrtBackend.from_weights(load_weights("deep-ct-net", tiny_dir), tiny_dir)
    assert backend.info.precision == "fp32"
    assert any("no VNNI" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
