"""The TensorRT backend: its cache key and the ONNX file it builds from run everywhere; building,
running and re-loading an engine need TensorRT and a CUDA GPU and are skipped (with the reason)
where either is missing."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.runtimes.base import RuntimeUnavailable
from engine.runtimes.onnx_export import RELATIVE_TOLERANCE, cache_dir, cached_onnx, relative_error
from engine.runtimes.tensorrt_backend import TensorRTBackend, engine_cache_key, timing_cache_key, write_atomic
from engine.weights import load_weights

#: TensorRT fp16 against PyTorch fp32 (same bound as the CUDA fp16 backend).
FP16_TOLERANCE = 2e-2

KEY_ARGS = dict(weights_sha256="ab" * 32, gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0),
                trt_version="10.3.0", precision="fp16", min_shape=(1, 1, 256, 256), opt_shape=(64, 1, 256, 256),
                max_shape=(256, 1, 256, 256))
KEY_CHANGES = dict(weights_sha256="cd" * 32, gpu_name="NVIDIA A100-SXM4-40GB", compute_capability=(8, 0),
                   trt_version="10.4.0", precision="fp32", min_shape=(2, 1, 256, 256), opt_shape=(32, 1, 256, 256),
                   max_shape=(128, 1, 256, 256))


def _reference(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x).expand(-1, 3, -1, -1))[:, 0].numpy()


def test_engine_cache_key_changes_with_each_input_and_is_a_safe_file_name() -> None:
    base = engine_cache_key(**KEY_ARGS)
    assert base == engine_cache_key(**KEY_ARGS), "a pure function"
    assert set(KEY_CHANGES) == set(KEY_ARGS)
    keys = {base}
    for field, value in KEY_CHANGES.items():
        key = engine_cache_key(**{**KEY_ARGS, field: value})
        assert key != base, f"{field} must change the key"
        keys.add(key)
    assert len(keys) == len(KEY_CHANGES) + 1
    # same readable parts after slugging ("H100 80GB" vs "H100/80GB"), still different keys
    assert engine_cache_key(**{**KEY_ARGS, "gpu_name": "NVIDIA H100/80GB HBM3"}) != base
    odd = engine_cache_key(**{**KEY_ARGS, "gpu_name": "GPU: \"x\" <y> \\ / * ? |", "trt_version": "10.0.1+cuda12 rc"})
    for key in keys | {odd}:
        assert re.fullmatch(r"[A-Za-z0-9.\-]+", key), key
        assert len(key) < 200 and not key.startswith(("-", "."))
    assert "sm90" in base and "trt10.3.0" in base and "fp16" in base and "b1-64-256" in base
    assert base.startswith(KEY_ARGS["weights_sha256"][:16])


def test_timing_cache_key_is_per_device_not_per_network() -> None:
    device = {k: KEY_ARGS[k] for k in ("gpu_name", "compute_capability", "trt_version", "precision")}
    key = timing_cache_key(**device)
    assert re.fullmatch(r"[A-Za-z0-9.\-]+", key)
    for field in device:
        assert timing_cache_key(**{**device, field: KEY_CHANGES[field]}) != key


def test_write_atomic_replaces_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "x.engine"
    write_atomic(path, b"old")
    write_atomic(path, memoryview(b"new contents"))
    assert path.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["x.engine"], "no temporary file left behind"


@pytest.mark.parametrize("name", ["deep-ct-net", "ct-net"])
def test_the_onnx_file_tensorrt_builds_from_runs_and_matches_torch(name: str, tiny_weights: Path,
                                                                  rng: np.random.Generator) -> None:
    """The engine's source graph: dynamic batch, one grey channel, ``input`` -> ``logit`` (N, 1)."""
    ort = pytest.importorskip("onnxruntime")
    loaded = load_weights(name, tiny_weights)
    path = cached_onnx(loaded, tiny_weights)
    assert path.parent == cache_dir(tiny_weights)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"] and [o.name for o in session.get_outputs()] == ["logit"]
    x = rng.normal(size=(3, 1, 64, 64)).astype(np.float32)
    reference = _reference(loaded.model, x)
    for n in (1, 3):
        (out,) = session.run(["logit"], {"input": x[:n]})
        assert out.shape == (n, 1)
        assert relative_error(out[:, 0], reference[:n]) <= RELATIVE_TOLERANCE


def test_missing_tensorrt_is_unavailable_with_the_fix(tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, installed or not
    loaded = load_weights("ct-net", tiny_weights)
    with pytest.raises(RuntimeUnavailable, match=r"TensorRT is not installed: pip install '\.\[tensorrt\]'"):
        TensorRTBackend(loaded, tiny_weights)


@pytest.fixture()
def trt_gpu() -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install '.[tensorrt]' on a GPU machine)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine; TensorRT engines need one")


@pytest.mark.usefixtures("trt_gpu")
def test_tensorrt_engine_matches_torch_and_is_cached(tiny_weights: Path, tmp_path: Path,
                                                     rng: np.random.Generator) -> None:
    import shutil

    wdir = tmp_path / "weights"  # a private cache folder: the first load must build
    shutil.copytree(tiny_weights, wdir, ignore=shutil.ignore_patterns(".onnx-cache"))
    loaded = load_weights("deep-ct-net", wdir)
    first = TensorRTBackend(loaded, wdir, max_batch=16, opt_batch=8)
    assert first.built and first.engine_path.is_file() and first.timing_cache_path.is_file()
    assert first.engine_path.parent == cache_dir(wdir)
    info = first.info
    assert (info.runtime, info.precision, info.channels, info.batch_size) == ("tensorrt", "fp16", 1, 16)
    x = rng.normal(size=(20, 1, 64, 64)).astype(np.float32)
    reference = _reference(loaded.model, x)
    for n in (1, 3, 16, 20):  # 20 > max_batch: split into 16 + 4
        got = first.logits(x[:n])
        assert got.dtype == np.float32 and got.shape == (n,)
        assert relative_error(got, reference[:n]) <= FP16_TOLERANCE
    on_device = torch.from_numpy(x[:5]).cuda()
    np.testing.assert_allclose(first.logits(on_device), first.logits(x[:5]), rtol=0, atol=0)

    stamp = first.engine_path.stat().st_mtime_ns
    second = TensorRTBackend(loaded, wdir, max_batch=16, opt_batch=8)
    assert not second.built and second.engine_path == first.engine_path
    assert first.engine_path.stat().st_mtime_ns == stamp, "the cached engine is loaded, not rebuilt"
    assert "cached" in second.info.detail
    np.testing.assert_allclose(second.logits(x[:3]), first.logits(x[:3]), rtol=0, atol=0)

    other = TensorRTBackend(loaded, wdir, max_batch=16, opt_batch=4)
    assert other.built and other.engine_path != first.engine_path, "another profile, another engine"


@pytest.mark.usefixtures("trt_gpu")
def test_a_corrupt_cached_engine_is_rebuilt(tiny_weights: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    import shutil

    wdir = tmp_path / "weights"
    shutil.copytree(tiny_weights, wdir, ignore=shutil.ignore_patterns(".onnx-cache"))
    loaded = load_weights("ct-net", wdir)
    backend = TensorRTBackend(loaded, wdir, max_batch=8, opt_batch=8)
    backend.engine_path.write_bytes(b"not an engine")
    again = TensorRTBackend(loaded, wdir, max_batch=8, opt_batch=8)
    assert again.built
    x = rng.normal(size=(2, 1, 64, 64)).astype(np.float32)
    assert relative_error(again.logits(x), _reference(loaded.model, x)) <= FP16_TOLERANCE
