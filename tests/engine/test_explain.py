"""Heatmaps: shape of the input image, values in [0, 1]; the overlay the workers burn in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from engine.explain import METHODS, attention_map, explain_image, occlusion_map, overlay
from engine.imageio import read_image
from engine.predictor import load_predictor


@pytest.mark.parametrize("network,kind", [("deep-ct-net", "ct"), ("ct-net", "ct"), ("deep-cxr-net", "cxr")])
def test_every_method_returns_a_unit_range_map_of_the_image_shape(network: str, kind: str, tiny_weights: Path,
                                                                 ct_dicom: Path) -> None:
    p = load_predictor(kind, runtime="torch", model_name=network, weights_directory=tiny_weights)
    gray = read_image(ct_dicom)[:500, :460]  # non-square on purpose
    for method in METHODS:
        if method == "attention" and network != "ct-net":
            with pytest.raises(ValueError, match="soft-mask"):
                explain_image(p, gray, method)
            continue
        heat = explain_image(p, gray, method)
        assert heat.shape == gray.shape and heat.dtype == np.float32
        assert heat.min() >= 0.0 and heat.max() <= 1.0


def test_ct_net_attention_map_follows_the_soft_masks(tiny_weights: Path, ct_dicom: Path) -> None:
    p = load_predictor("ct", runtime="torch", model_name="ct-net", weights_directory=tiny_weights)
    gray = read_image(ct_dicom)
    heat = attention_map(p, gray, stage=1)
    assert heat.max() == pytest.approx(1.0, abs=1e-3) and heat.min() == pytest.approx(0.0, abs=1e-3)
    assert all(m.last_mask is not None for m in p.torch_model.attention_modules)


def test_occlusion_rejects_bad_patch(tiny_weights: Path) -> None:
    p = load_predictor("ct", runtime="torch", weights_directory=tiny_weights)
    with pytest.raises(ValueError):
        occlusion_map(p, np.zeros((64, 64), np.uint8), patch=0)


def test_overlay_blends_colour_over_grey() -> None:
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    heat = np.zeros((64, 64), np.float32)
    heat[20:40, 20:40] = 1.0
    rgb = overlay(gray, heat, alpha=0.5)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[0, 0], [0, 0, 0]) or rgb[0, 0].std() < 40
    untouched = overlay(gray, heat, alpha=0.0)
    assert np.array_equal(untouched, np.repeat(gray[..., None], 3, axis=2))
    hot = rgb[30, 30].astype(int)
    assert hot.max() - hot.min() > 50, "the hot region must be coloured"
    assert np.array_equal(overlay(gray, heat[:32, :32], alpha=0.5).shape, rgb.shape)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "attention"])
def test_explanations_of_two_studies_at_once_each_belong_to_their_own_image(
    method: str, tiny_weights: Path, ct_dicom: Path,
) -> None:
    """The threads pool (the GPU worker) explains several studies at once with one model: the maps
    are read through hooks and module state on that model, so each must see its own forward pass."""
    from concurrent.futures import ThreadPoolExecutor

    p = load_predictor("ct", runtime="torch", model_name="ct-net", weights_directory=tiny_weights)
    real = read_image(ct_dicom)
    flipped = np.ascontiguousarray(real[::-1, ::-1])
    expected = [explain_image(p, image, method) for image in (real, flipped)]
    assert not np.allclose(expected[0], expected[1])

    scores = p.predict_images([real, flipped])

    def explain_or_score(index: int) -> NDArray[np.float32]:
        # the eager CPU runtime scores through this same module: its forwards run beside the maps'
        if index % 3 == 2:
            return p.predict_images([real, flipped])
        return explain_image(p, (real, flipped)[index % 3], method)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(explain_or_score, range(36)))
    for index, result in enumerate(results):
        want = scores if index % 3 == 2 else expected[index % 3]
        np.testing.assert_allclose(result, want, atol=1e-5, err_msg=f"call {index}")
