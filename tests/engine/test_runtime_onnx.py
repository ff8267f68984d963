"""The ONNX export every CPU and TensorRT runtime starts from: grey-input folding, numerical parity
with PyTorch within the stated bound, cache by weights hash, and ONNX Runtime's settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from engine.imageio import read_image
from engine.preprocess import preprocess
from engine.runtimes.grey import fold_grey_input, stem_convolutions
from engine.runtimes.onnx_export import ONNX_OPSET, RELATIVE_TOLERANCE, cached_onnx, relative_error
from engine.runtimes.ort_cpu import OrtBackend, available_cores
from engine.weights import load_weights

NETWORKS = ["deep-ct-net", "ct-net", "deep-cxr-net"]


def _real_batch(paths: list[Path], size: int) -> np.ndarray:
    return np.stack([preprocess(read_image(p), size) for p in paths])


@pytest.mark.parametrize("name", NETWORKS)
def test_folded_grey_network_equals_the_trained_one(name: str, tiny_weights: Path, ct_images: list[Path]) -> None:
    loaded = load_weights(name, tiny_weights)
    assert stem_convolutions(loaded.model), "every network reads the image through a 3-channel stem"
    x = torch.from_numpy(_real_batch(ct_images[:4], 64))
    with torch.no_grad():
        reference = loaded.model(x)[:, 0].numpy()
        folded = fold_grey_input(loaded.model)(x[:, :1])[:, 0].numpy()
    assert relative_error(folded, reference) <= RELATIVE_TOLERANCE
    assert loaded.model.get_submodule(stem_convolutions(loaded.model)[0]).in_channels == 3, "original untouched"


@pytest.mark.parametrize("name", NETWORKS)
def test_onnx_export_matches_torch_at_several_batch_sizes(name: str, tiny_weights: Path,
                                                          ct_images: list[Path]) -> None:
    loaded = load_weights(name, tiny_weights)
    path = cached_onnx(loaded, tiny_weights)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert max(op.version for op in graph.opset_import if op.domain in ("", "ai.onnx")) >= ONNX_OPSET
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 64, 64]
    backend = OrtBackend(path, threads=1)
    x = _real_batch(ct_images[:5], 64)
    with torch.no_grad():
        reference = loaded.model(torch.from_numpy(x))[:, 0].numpy()
    for n in (1, 2, 5):
        assert relative_error(backend.logits(x[:n, :1]), reference[:n]) <= RELATIVE_TOLERANCE


def test_export_is_cached_by_weights_hash_and_redone_for_new_weights(tiny_weights: Path, tmp_path: Path) -> None:
    loaded = load_weights("deep-ct-net", tiny_weights)
    first = cached_onnx(loaded, tiny_weights)
    stamp = first.stat().st_mtime_ns
    assert cached_onnx(loaded, tiny_weights) == first and first.stat().st_mtime_ns == stamp
    assert loaded.sha256[:16] in first.name
    loaded.sha256 = "f" * 64  # other weights, other file
    assert cached_onnx(loaded, tiny_weights) != first


def test_onnxruntime_splits_the_batch_over_cores_or_each_operator(tiny_weights: Path, ct_images: list[Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_weights("ct-net", tiny_weights)
    path = cached_onnx(loaded, tiny_weights)
    info = OrtBackend(path).info
    assert info.runtime == "onnxruntime" and info.channels == 1
    assert info.detail.startswith(f"{available_cores()} parallel") and info.batch_size == 4 * available_cores()
    monkeypatch.setenv("TRIAGE_ORT_THREADS", "3")
    three = OrtBackend(path)
    assert three.info.batch_size == 12
    x = _real_batch(ct_images[:7], 64)[:, :1]
    single = OrtBackend(path, threads=1)
    # split across three runs or run whole: the same logits, in the same order
    np.testing.assert_allclose(three.logits(x), single.logits(x), rtol=1e-6, atol=1e-6)
    # fewer slices than cores: one run of a three-threaded session (operators split across threads)
    for few in (x[:1], x[1:3]):
        np.testing.assert_allclose(three.logits(few), single.logits(few), rtol=1e-5, atol=1e-5)


def test_committed_weights_export_within_bound(ct_images: list[Path]) -> None:
    """The shipped weights, not just tiny ones: the worker's default runtime agrees with PyTorch."""
    loaded = load_weights("deep-ct-net")
    size = int(loaded.config["image_size"])
    x = _real_batch(ct_images[:3], size)
    backend = OrtBackend(cached_onnx(loaded, loaded.path.parent), threads=1)
    with torch.no_grad():
        reference = loaded.model(torch.from_numpy(x))[:, 0].numpy()
    assert relative_error(backend.logits(x[:, :1]), reference) <= RELATIVE_TOLERANCE
