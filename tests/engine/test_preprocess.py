"""THE preprocessing: each step, and that training and inference compute the same thing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.augment import DEEP_CT_NET_AUGMENT, AugmentConfig, augment_batch
from engine.data import covid_ct_samples, expand_channels, preprocess_samples
from engine.imageio import read_image
from engine.preprocess import equalize_histogram, preprocess, to_uint8, window_hu


def test_lung_window_maps_its_edges_to_black_and_white() -> None:
    hu = np.array([-2000.0, -1350.0, -600.0, 150.0, 3000.0])
    assert window_hu(hu).tolist() == [0, 0, 128, 255, 255]
    assert window_hu(hu, center=40, width=400).tolist() == [0, 0, 0, 198, 255]  # (150 + 160) / 400 * 255
    with pytest.raises(ValueError):
        window_hu(hu, width=0)


def test_histogram_equalisation_spreads_a_narrow_range(rng: np.random.Generator) -> None:
    img = rng.integers(100, 120, size=(64, 64)).astype(np.uint8)
    eq = equalize_histogram(img)
    assert eq.min() == 0 and eq.max() == 255
    # monotone: the order of grey levels is kept
    order = np.argsort(img.ravel(), kind="stable")
    assert np.all(np.diff(eq.ravel()[order].astype(int)) >= 0)


def test_to_uint8_handles_rgb_sixteen_bit_and_constant_images() -> None:
    rgb = np.zeros((4, 4, 3), np.uint8); rgb[..., 0] = 255
    assert to_uint8(rgb).max() == 76  # 0.299 * 255
    assert to_uint8(np.array([[0, 4095]], np.uint16)).tolist() == [[0, 255]]
    assert to_uint8(np.full((3, 3), 7.5)).max() == 0


def test_preprocess_output_is_standardised_three_identical_channels(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, size=(300, 200)).astype(np.uint8)
    x = preprocess(img, 256)
    assert x.shape == (3, 256, 256) and x.dtype == np.float32
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    assert np.array_equal(x[0], x[1]) and np.array_equal(x[0], x[2])


def test_preprocess_is_deterministic(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, size=(128, 128)).astype(np.uint8)
    assert np.array_equal(preprocess(img, 64), preprocess(img.copy(), 64))


def test_training_arrays_equal_inference_preprocessing_on_real_images(shared_data) -> None:
    """The training cache (data.preprocess_samples) holds exactly what a Predictor computes."""
    from engine.train import _batch

    samples = covid_ct_samples("val")[:3]
    cached = preprocess_samples(samples, 96)
    batch = _batch(cached, np.arange(3), torch.device("cpu")).numpy()
    for i, s in enumerate(samples):
        inference = preprocess(read_image(s.path), 96)
        assert np.array_equal(batch[i], inference)
        assert np.array_equal(expand_channels(cached)[i], inference)


def test_augmentation_is_separate_random_and_shape_preserving(rng: np.random.Generator) -> None:
    x = torch.from_numpy(np.stack([preprocess(rng.integers(0, 256, (80, 80)).astype(np.uint8), 64)[:1]] * 2))
    g = torch.Generator().manual_seed(0)
    a = augment_batch(x, DEEP_CT_NET_AUGMENT, g)
    assert a.shape == x.shape and not torch.equal(a, x)
    identity = augment_batch(x, AugmentConfig(rotation_deg=0, translate=0), g)
    torch.testing.assert_close(identity, x, atol=1e-5, rtol=0)
