"""The workers' interface: load_predictor, preprocessing, batch prediction, ONNX Runtime parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.imageio import read_image
from engine.predictor import DEFAULT_MODELS, load_predictor
from engine.preprocess import preprocess
from engine.weights import WeightsError


def test_defaults_and_attributes(tiny_weights: Path) -> None:
    assert DEFAULT_MODELS == {"ct": "deep-ct-net", "cxr": "deep-cxr-net"}
    p = load_predictor("ct", runtime="torch", weights_directory=tiny_weights)
    assert p.model_name == "deep-ct-net" and p.model_version.startswith("deep-ct-net@")
    assert p.threshold == 0.5 and p.input_size == 64 and p.runtime == "torch"


def test_predictor_preprocess_is_the_preprocessing(tiny_weights: Path, ct_dicom: Path) -> None:
    p = load_predictor("ct", runtime="torch", weights_directory=tiny_weights)
    gray = read_image(ct_dicom)
    assert np.array_equal(p.preprocess(gray), preprocess(gray, 64))


@pytest.mark.parametrize("kind", ["ct", "cxr"])
def test_predict_images_equals_predict_on_preprocessed_batch(kind: str, tiny_weights: Path,
                                                             ct_images: list[Path]) -> None:
    p = load_predictor(kind, runtime="torch", weights_directory=tiny_weights)
    images = [read_image(x) for x in ct_images[:5]]
    scores = p.predict_images(images, batch_size=2)
    assert scores.shape == (5,) and scores.dtype == np.float32
    assert ((scores > 0) & (scores < 1)).all()
    direct = p.predict(np.stack([p.preprocess(im) for im in images]))
    np.testing.assert_allclose(scores, direct, atol=1e-6)
    assert p.predict_images([]).shape == (0,)
    with pytest.raises(ValueError, match="shape"):
        p.predict(np.zeros((1, 3, 32, 32), np.float32))


@pytest.mark.parametrize("kind", ["ct", "cxr"])
def test_onnxruntime_matches_torch_and_is_cached_by_weights_hash(kind: str, tiny_weights: Path,
                                                                 ct_images: list[Path]) -> None:
    torch_p = load_predictor(kind, runtime="torch", weights_directory=tiny_weights)
    ort_p = load_predictor(kind, runtime="onnxruntime", weights_directory=tiny_weights)
    assert ort_p.runtime == "onnxruntime" and ort_p.model_version == torch_p.model_version
    assert ort_p.backend.info.channels == 1 and torch_p.backend.info.channels == 3
    images = [read_image(x) for x in ct_images[:3]]
    np.testing.assert_allclose(ort_p.predict_images(images), torch_p.predict_images(images), atol=1e-5)
    cached = list((tiny_weights / ".onnx-cache").glob(f"{torch_p.model_name}-{torch_p.model_version[-12:]}*.onnx"))
    assert len(cached) == 1


def test_prepare_gives_the_backend_its_channels(tiny_weights: Path, ct_images: list[Path]) -> None:
    images = [read_image(x) for x in ct_images[:2]]
    ort_p = load_predictor("ct", runtime="onnxruntime", weights_directory=tiny_weights)
    torch_p = load_predictor("ct", runtime="torch", weights_directory=tiny_weights)
    grey, full = ort_p.prepare(images), torch_p.prepare(images)
    assert grey.shape == (2, 1, 64, 64) and full.shape == (2, 3, 64, 64)
    assert np.array_equal(grey[:, 0], full[:, 2])
    np.testing.assert_allclose(ort_p.predict(full), ort_p.predict(grey), atol=0)
    differing = full.copy()
    differing[:, 1] += 1.0
    with pytest.raises(ValueError, match="channels differ"):
        ort_p.predict(differing)


def test_auto_runtime_resolves_to_a_working_runtime(tiny_weights: Path) -> None:
    p = load_predictor("ct", weights_directory=tiny_weights)
    assert p.runtime == "onnxruntime" and p.device == "cpu" and p.precision == "fp32"  # no GPU on CI
    assert p.predict(np.zeros((2, 3, 64, 64), np.float32)).shape == (2,)


def test_missing_weights_raise_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="triage train deep-cxr-net"):
        load_predictor("cxr", weights_directory=tmp_path)
    with pytest.raises(ValueError, match="kind"):
        load_predictor("mri", weights_directory=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="runtime"):
        load_predictor("ct", runtime="openvino", weights_directory=tmp_path)
