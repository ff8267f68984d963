"""The CUDA PyTorch backend: the folding, bucketing, padding and splitting run (and are checked) on
the CPU; fp16 with CUDA graphs is checked where a GPU is present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.runtimes.base import Backend, RuntimeUnavailable
from engine.runtimes.onnx_export import RELATIVE_TOLERANCE, relative_error
from engine.runtimes.torch_cuda import CudaBackend, bucket_for, bucket_sizes
from engine.weights import load_weights

NETWORKS = ["deep-ct-net", "ct-net", "deep-cxr-net"]
#: fp16 arithmetic against the fp32 reference: ~1e-3 measured on these networks; 2e-2 is the bound.
FP16_TOLERANCE = 2e-2


def _reference(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """The trained three-channel network, eager fp32: grey replicated to three channels."""
    with torch.no_grad():
        return model(torch.from_numpy(x).expand(-1, 3, -1, -1))[:, 0].numpy()


def _record_batches(backend: CudaBackend) -> list[int]:
    seen: list[int] = []
    backend.module.register_forward_pre_hook(lambda _m, args: seen.append(int(args[0].shape[0])))
    return seen


def test_buckets() -> None:
    assert bucket_sizes(256) == (1, 8, 32, 64, 128, 256)
    assert bucket_sizes(8) == (1, 8)
    assert bucket_sizes(100) == (1, 8, 32, 64, 100)
    assert bucket_sizes(1) == (1,)
    assert [bucket_for(n, (1, 8)) for n in (1, 2, 8)] == [1, 8, 8]
    with pytest.raises(ValueError):
        bucket_for(9, (1, 8))
    with pytest.raises(ValueError):
        bucket_sizes(0)


@pytest.mark.parametrize("name", NETWORKS)
def test_cpu_logits_equal_the_trained_network_with_padding_and_split(name: str, tiny_weights: Path,
                                                                     rng: np.random.Generator) -> None:
    loaded = load_weights(name, tiny_weights)
    backend = CudaBackend(loaded, "cpu", precision="fp32", cuda_graphs=False, max_batch=8)
    assert isinstance(backend, Backend)
    x = rng.normal(size=(9, 1, 64, 64)).astype(np.float32)
    reference = _reference(loaded.model, x)
    seen = _record_batches(backend)
    for n in (1, 3, 9):
        got = backend.logits(x[:n])
        assert got.dtype == np.float32 and got.shape == (n,)
        assert relative_error(got, reference[:n]) <= RELATIVE_TOLERANCE
    assert seen == [1, 8, 8, 1], "1 runs as 1; 3 padded to 8; 9 split into 8 + 1"


def test_cpu_backend_layout_info_and_tensor_input(tiny_weights: Path, rng: np.random.Generator) -> None:
    loaded = load_weights("deep-ct-net", tiny_weights)
    backend = CudaBackend(loaded, "cpu", precision="fp32", cuda_graphs=False, max_batch=8)
    info = backend.info
    assert (info.runtime, info.precision, info.device, info.channels, info.batch_size) == ("cuda", "fp32", "cpu", 1, 8)
    assert info.detail.startswith("channels_last")
    stem = next(m for m in backend.module.modules() if isinstance(m, torch.nn.Conv2d))
    assert stem.in_channels == 1 and stem.weight.is_contiguous(memory_format=torch.channels_last)
    first = next(m for m in loaded.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 3 and first.weight.dtype == torch.float32, "the loaded model is left alone"
    x = rng.normal(size=(3, 1, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(backend.logits(torch.from_numpy(x)), backend.logits(x), rtol=0, atol=0)
    assert backend.logits(x[:0]).shape == (0,)
    with pytest.raises(ValueError, match="expected a batch"):
        backend.logits(np.zeros((2, 3, 64, 64), np.float32))


def test_cpu_settings_that_need_a_gpu_are_refused(tiny_weights: Path) -> None:
    loaded = load_weights("ct-net", tiny_weights)
    with pytest.raises(ValueError, match="fp16"):
        CudaBackend(loaded, "cpu", precision="fp16", cuda_graphs=False)
    with pytest.raises(ValueError, match="graphs"):
        CudaBackend(loaded, "cpu", precision="fp32", cuda_graphs=True)
    with pytest.raises(ValueError, match="precision"):
        CudaBackend(loaded, "cpu", precision="int8", cuda_graphs=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present; the no-GPU message is not reachable")
def test_cuda_device_without_a_gpu_is_unavailable(tiny_weights: Path) -> None:
    loaded = load_weights("ct-net", tiny_weights)
    with pytest.raises(RuntimeUnavailable, match="no CUDA GPU.*TRIAGE_RUNTIME=onnxruntime"):
        CudaBackend(loaded, "cuda")
    with pytest.raises(RuntimeUnavailable):
        CudaBackend(loaded, "cuda:0", precision="fp32", cuda_graphs=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("name", NETWORKS)
def test_cuda_fp16_graphs_match_fp32_eager(name: str, tiny_weights: Path, rng: np.random.Generator) -> None:
    loaded = load_weights(name, tiny_weights)
    backend = CudaBackend(loaded, "cuda", max_batch=32)
    assert backend.info.precision == "fp16" and backend.info.device.startswith("cuda:")
    assert "CUDA graphs" in backend.info.detail
    x = rng.normal(size=(40, 1, 64, 64)).astype(np.float32)
    reference = _reference(loaded.model, x)
    for n in (1, 5, 8, 40):  # buckets 1, 8, 8 (replayed), 32 + 8 (split)
        assert relative_error(backend.logits(x[:n]), reference[:n]) <= FP16_TOLERANCE
    assert sorted(backend._graphs) == [1, 8, 32], "one graph per bucket used, captured once"
    on_device = torch.from_numpy(x[:5]).cuda()
    np.testing.assert_allclose(backend.logits(on_device), backend.logits(x[:5]), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_fp32_without_graphs_matches_eager(tiny_weights: Path, rng: np.random.Generator,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_weights("deep-ct-net", tiny_weights)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # TF32 convolutions round to ~1e-3
    backend = CudaBackend(loaded, "cuda", precision="fp32", cuda_graphs=False, max_batch=8)
    x = rng.normal(size=(9, 1, 64, 64)).astype(np.float32)
    assert relative_error(backend.logits(x), _reference(loaded.model, x)) <= 1e-3
