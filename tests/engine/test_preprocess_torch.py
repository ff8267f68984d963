"""engine.preprocess_torch computes THE preprocessing of engine.preprocess, on whole batches, on the
CPU here and on CUDA where there is a GPU: each step on real CT slices and real PNGs, the full
pipeline within its stated tolerance, and the network's probability on both inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.imageio import dataset_to_gray, dataset_to_hu, read_dicom, read_image
from engine.preprocess import (equalize_histogram, gaussian_blur_3x3, preprocess, resize, standardize, to_uint8,
                               window_hu)
from engine.preprocess_torch import (compare_with_numpy, equalize_histogram_torch, gaussian_blur_3x3_torch,
                                     preprocess_batch_torch, preprocess_hu_batch_torch, resize_torch,
                                     standardize_torch, window_hu_torch)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                  reason="no CUDA GPU on this machine"))]

#: The stated tolerance of the full pipeline (default, Pillow-exact resize), standardised units.
PIPELINE_MAX_ABS = 1e-5
PIPELINE_MEAN_ABS = 1e-6
#: The stated bound on Deep-CT-Net's probability, torch-preprocessed vs NumPy-preprocessed input.
PROBABILITY_ABS = 1e-5
#: The same for the F.interpolate resize (one grey level off at ~13 % of pixels).
INTERP_PIXEL_FRACTION = 0.15
INTERP_MAX_ABS, INTERP_MEAN_ABS, INTERP_PROBABILITY_ABS = 0.02, 0.003, 0.005


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ct_files(dicom_dir: Path) -> list[Path]:
    files = sorted((dicom_dir / "ct-covid19-ny-sbu").glob("*/axial/*.dcm"))
    if not files:
        pytest.skip("no axial CT DICOM under dicom/ct-covid19-ny-sbu")
    return files


@pytest.fixture(scope="module")
def ct_hu(ct_files: list[Path]) -> list[np.ndarray]:
    """Hounsfield units of every real axial CT slice (512x512, float32)."""
    import pydicom

    return [dataset_to_hu(pydicom.dcmread(f)) for f in ct_files]


@pytest.fixture(scope="module")
def ct_gray(ct_hu: list[np.ndarray]) -> list[np.ndarray]:
    return [window_hu(h) for h in ct_hu]


@pytest.fixture(scope="module")
def png_gray(ct_images: list[Path]) -> list[np.ndarray]:
    """The eight real covid-ct images, of several shapes, as uint8 grey."""
    return [read_image(p) for p in ct_images]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _by_shape(images: list[np.ndarray]) -> dict[tuple[int, ...], list[np.ndarray]]:
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    for im in images:
        groups.setdefault(im.shape, []).append(im)
    return groups


# --------------------------------------------------------------------------------------------- window
@pytest.mark.parametrize("device", DEVICES)
def test_window_equals_numpy_and_the_dicom_reader_on_real_ct(device: str, ct_files: list[Path],
                                                             ct_hu: list[np.ndarray]) -> None:
    got = _np(window_hu_torch(torch.from_numpy(np.stack(ct_hu)).to(device)))
    assert got.dtype == np.uint8
    for i, (f, h) in enumerate(zip(ct_files, ct_hu, strict=True)):
        assert np.array_equal(got[i], window_hu(h))
        assert np.array_equal(got[i], read_dicom(f))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("window", [(-600.0, 1500.0), (40.0, 400.0), (-500.0, 1400.0), (50.0, 350.0)])
def test_window_rounds_half_to_even_as_numpy_on_every_hu_value(device: str, window: tuple[float, float]) -> None:
    # every integer and half-integer HU (and a few thirds) in range, which hits the .5 boundaries
    hu = np.concatenate([np.arange(-2048, 3072, 0.5), np.arange(-1400, -1300) + 1 / 3]).astype(np.float32)
    got = _np(window_hu_torch(torch.from_numpy(hu).to(device), *window))
    assert np.array_equal(got, window_hu(hu, *window))
    ints = np.arange(-2048, 3072, dtype=np.int16)  # stored integers go through the same float32 path
    assert np.array_equal(_np(window_hu_torch(torch.from_numpy(ints).to(device), *window)), window_hu(ints, *window))
    with pytest.raises(ValueError):
        window_hu_torch(torch.zeros(3), width=0)


# -------------------------------------------------------------------------------------- equalisation
@pytest.mark.parametrize("device", DEVICES)
def test_equalisation_equals_numpy_on_real_images_batched(device: str, ct_gray: list[np.ndarray],
                                                          png_gray: list[np.ndarray]) -> None:
    got = _np(equalize_histogram_torch(torch.from_numpy(np.stack(ct_gray)).to(device)))
    for i, g in enumerate(ct_gray):
        assert np.array_equal(got[i], equalize_histogram(g))
    for shape, group in _by_shape(png_gray).items():
        got = _np(equalize_histogram_torch(torch.from_numpy(np.stack(group)).to(device)))
        assert got.shape == (len(group), *shape)
        for i, g in enumerate(group):
            assert np.array_equal(got[i], equalize_histogram(g))


@pytest.mark.parametrize("device", DEVICES)
def test_equalisation_of_constant_and_two_level_images_in_one_batch(device: str, ct_gray: list[np.ndarray]) -> None:
    constant = np.full((512, 512), 77, np.uint8)
    two = np.zeros((512, 512), np.uint8)
    two[:10] = 200
    black = np.zeros((512, 512), np.uint8)
    images = [constant, ct_gray[0], two, black]
    got = _np(equalize_histogram_torch(torch.from_numpy(np.stack(images)).to(device)))
    for i, g in enumerate(images):
        assert np.array_equal(got[i], equalize_histogram(g))
    with pytest.raises(ValueError):
        equalize_histogram_torch(torch.zeros((4, 4), dtype=torch.uint8))


# -------------------------------------------------------------------------------------------- resize
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [256, 224, 64])
def test_pillow_resize_equals_pillow_on_real_images(device: str, size: int, ct_gray: list[np.ndarray],
                                                    png_gray: list[np.ndarray]) -> None:
    eq = np.stack([equalize_histogram(g) for g in ct_gray])
    got = _np(resize_torch(torch.from_numpy(eq).to(device), size))
    assert got.shape == (len(eq), size, size) and got.dtype == np.uint8
    for i, g in enumerate(eq):
        assert np.array_equal(got[i], resize(g, size))
    for _, group in _by_shape(png_gray).items():
        got = _np(resize_torch(torch.from_numpy(np.stack(group)).to(device), size))
        for i, g in enumerate(group):
            assert np.array_equal(got[i], resize(g, size))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (512, 400), (400, 512), (100, 60), (70, 66), (80, 71),
                                   (80, 72), (37, 511), (1024, 700), (256, 300), (100, 256), (17, 5), (256, 256),
                                   (2, 1000), (1000, 2)])
def test_pillow_resize_equals_pillow_on_awkward_shapes(device: str, shape: tuple[int, int],
                                                       rng: np.random.Generator) -> None:
    """Down and up, either axis, and the shapes where Pillow 13 resamples vertically first."""
    imgs = rng.integers(0, 256, size=(2, *shape)).astype(np.uint8)
    for size in (256, 64):
        got = _np(resize_torch(torch.from_numpy(imgs).to(device), size))
        for i in range(2):
            assert np.array_equal(got[i], resize(imgs[i], size)), (shape, size)


@pytest.mark.parametrize("device", DEVICES)
def test_interpolate_resize_is_within_one_grey_level_of_pillow(device: str, ct_gray: list[np.ndarray]) -> None:
    eq = np.stack([equalize_histogram(g) for g in ct_gray])
    got = _np(resize_torch(torch.from_numpy(eq).to(device), 256, method="interpolate")).astype(np.int16)
    ref = np.stack([resize(g, 256) for g in eq]).astype(np.int16)
    diff = np.abs(got - ref)
    assert diff.max() <= 1
    assert (diff > 0).mean() <= INTERP_PIXEL_FRACTION  # measured 0.129 on these slices
    with pytest.raises(ValueError):
        resize_torch(torch.from_numpy(eq).to(device), 256, method="nearest")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- blur, standardisation
@pytest.mark.parametrize("device", DEVICES)
def test_blur_equals_scipy_exactly_on_resized_images(device: str, ct_gray: list[np.ndarray]) -> None:
    resized = np.stack([resize(equalize_histogram(g), 256) for g in ct_gray])
    got = _np(gaussian_blur_3x3_torch(torch.from_numpy(resized).to(device)))
    assert got.dtype == np.float32
    for i, r in enumerate(resized):
        assert np.array_equal(got[i], gaussian_blur_3x3(r))
    got4 = _np(gaussian_blur_3x3_torch(torch.from_numpy(resized[:, None]).to(device)))
    assert np.array_equal(got4[:, 0], got)


@pytest.mark.parametrize("device", DEVICES)
def test_standardisation_matches_numpy_to_float32_rounding(device: str, ct_gray: list[np.ndarray]) -> None:
    blurred = np.stack([gaussian_blur_3x3(resize(equalize_histogram(g), 256)) for g in ct_gray])
    got = _np(standardize_torch(torch.from_numpy(blurred).to(device)))
    ref = np.stack([standardize(b) for b in blurred])
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() <= PIPELINE_MAX_ABS
    assert np.allclose(got.mean(axis=(1, 2)), 0, atol=1e-5) and np.allclose(got.std(axis=(1, 2)), 1, atol=1e-5)
    flat = _np(standardize_torch(torch.full((2, 8, 8), 3.0, device=device)))
    assert np.array_equal(flat, np.zeros((2, 8, 8), np.float32))  # constant image: zeros, as in NumPy


# ------------------------------------------------------------------------------------------ pipeline
def _check_pipeline(got: torch.Tensor, ref: np.ndarray, device: str, max_abs: float, mean_abs: float) -> None:
    assert got.dtype == torch.float32 and got.device.type == device
    diff = np.abs(_np(got) - ref)
    assert diff.max() <= max_abs, diff.max()
    assert diff.mean() <= mean_abs, diff.mean()


@pytest.mark.parametrize("device", DEVICES)
def test_gray_pipeline_matches_numpy_on_real_ct_within_the_stated_tolerance(device: str,
                                                                           ct_gray: list[np.ndarray]) -> None:
    ref = np.stack([preprocess(g, 256)[:1] for g in ct_gray])
    got = preprocess_batch_torch(ct_gray, 256, device)
    assert got.shape == (len(ct_gray), 1, 256, 256)
    _check_pipeline(got, ref, device, PIPELINE_MAX_ABS, PIPELINE_MEAN_ABS)
    as_tensor = preprocess_batch_torch(torch.from_numpy(np.stack(ct_gray)), 256, device)
    assert torch.equal(as_tensor, got)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_shapes_are_grouped_and_kept_in_order(device: str, png_gray: list[np.ndarray],
                                                    ct_gray: list[np.ndarray]) -> None:
    images = [png_gray[0], ct_gray[0], *png_gray[1:], ct_gray[1]]
    assert len({im.shape for im in images}) > 2
    ref = np.stack([preprocess(im, 224) for im in images])
    got = preprocess_batch_torch(images, 224, device, channels=3)
    assert got.shape == (len(images), 3, 224, 224)
    assert torch.equal(got[:, 0], got[:, 1]) and torch.equal(got[:, 0], got[:, 2])
    _check_pipeline(got, ref, device, PIPELINE_MAX_ABS, PIPELINE_MEAN_ABS)


@pytest.mark.parametrize("device", DEVICES)
def test_non_uint8_inputs_go_through_to_uint8_as_in_numpy(device: str, ct_hu: list[np.ndarray],
                                                          rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, size=(120, 90, 3)).astype(np.uint8)
    images = [ct_hu[0].astype(np.int16), rgb, ct_hu[1]]  # min-max scaled, luminance, min-max scaled
    ref = np.stack([preprocess(im, 64)[:1] for im in images])
    _check_pipeline(preprocess_batch_torch(images, 64, device), ref, device, PIPELINE_MAX_ABS, PIPELINE_MEAN_ABS)
    assert to_uint8(rgb).shape == (120, 90)


@pytest.mark.parametrize("device", DEVICES)
def test_hu_pipeline_windows_on_the_device_and_matches_numpy(device: str, ct_hu: list[np.ndarray]) -> None:
    ref = np.stack([preprocess(window_hu(h), 256)[:1] for h in ct_hu])
    got = preprocess_hu_batch_torch(ct_hu, 256, device)
    assert got.shape == (len(ct_hu), 1, 256, 256)
    _check_pipeline(got, ref, device, PIPELINE_MAX_ABS, PIPELINE_MEAN_ABS)
    assert torch.equal(preprocess_hu_batch_torch(torch.from_numpy(np.stack(ct_hu)), 256, device), got)
    soft = np.stack([preprocess(window_hu(h, 40, 400), 128)[:1] for h in ct_hu[:3]])
    _check_pipeline(preprocess_hu_batch_torch(ct_hu[:3], 128, device, center=40, width=400), soft, device,
                    PIPELINE_MAX_ABS, PIPELINE_MEAN_ABS)


@pytest.mark.parametrize("device", DEVICES)
def test_ct_dicom_fixture_through_both_paths(device: str, ct_dicom: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(ct_dicom)
    ref = preprocess(dataset_to_gray(ds), 256)[:1][None]
    got = preprocess_hu_batch_torch([dataset_to_hu(ds)], 256, device)
    _check_pipeline(got, ref, device, PIPELINE_MAX_ABS, PIPELINE_MEAN_ABS)


@pytest.mark.parametrize("device", DEVICES)
def test_interpolate_pipeline_within_its_stated_tolerance(device: str, ct_hu: list[np.ndarray]) -> None:
    ref = np.stack([preprocess(window_hu(h), 256)[:1] for h in ct_hu])
    got = preprocess_hu_batch_torch(ct_hu, 256, device, method="interpolate")
    _check_pipeline(got, ref, device, INTERP_MAX_ABS, INTERP_MEAN_ABS)  # measured 0.0105 and 0.0013


def test_empty_batches_and_bad_arguments() -> None:
    assert preprocess_batch_torch([], 64, "cpu").shape == (0, 1, 64, 64)
    assert preprocess_hu_batch_torch([], 64, "cpu", channels=3).shape == (0, 3, 64, 64)
    assert preprocess_batch_torch(torch.zeros((0, 8, 8), dtype=torch.uint8), 64, "cpu").shape == (0, 1, 64, 64)
    with pytest.raises(ValueError):
        preprocess_batch_torch(torch.zeros((2, 8, 8)), 64, "cpu")  # float tensor: uint8 only
    with pytest.raises(ValueError):
        preprocess_batch_torch([np.zeros((8, 8), np.uint8)], 64, "cpu", channels=2)
    with pytest.raises(ValueError):
        preprocess_hu_batch_torch([np.zeros((8, 8), np.float32)], 64, "cpu", width=-1)
    with pytest.raises(ValueError):
        preprocess_hu_batch_torch([np.zeros((2, 8, 8), np.float32)], 64, "cpu")


# ------------------------------------------------------------------------------------------- network
@pytest.fixture(scope="module")
def deep_ct_net():
    from engine.weights import load_weights, weights_dir, weights_path

    if not weights_path("deep-ct-net", weights_dir()).is_file():
        pytest.skip("deep-ct-net weights not trained yet")
    return load_weights("deep-ct-net")


@pytest.mark.parametrize("device", DEVICES)
def test_network_probability_is_the_same_on_both_preprocessings(device: str, deep_ct_net, ct_hu: list[np.ndarray],
                                                                png_gray: list[np.ndarray]) -> None:
    """Deep-CT-Net (committed weights, run on the CPU) on NumPy- vs torch-preprocessed inputs."""
    size = int(deep_ct_net.config["image_size"])
    model = deep_ct_net.model.eval()
    hu = ct_hu[:6]
    grays = png_gray[:4]
    ref = np.concatenate([np.stack([preprocess(window_hu(h), size) for h in hu]),
                          np.stack([preprocess(g, size) for g in grays])])
    with torch.inference_mode():
        p_ref = torch.sigmoid(model(torch.from_numpy(ref))).squeeze(1)
        for method, bound in (("pillow", PROBABILITY_ABS), ("interpolate", INTERP_PROBABILITY_ABS)):
            x = torch.cat([preprocess_hu_batch_torch(hu, size, device, method=method, channels=3),
                           preprocess_batch_torch(grays, size, device, method=method, channels=3)]).cpu()
            p = torch.sigmoid(model(x)).squeeze(1)
            assert float((p - p_ref).abs().max()) <= bound, (method, (p - p_ref).abs().max())


# ---------------------------------------------------------------------------------------- comparison
def test_compare_with_numpy_reports_differences_and_times(ct_gray: list[np.ndarray], ct_hu: list[np.ndarray]) -> None:
    r = compare_with_numpy(ct_gray[:4], 64, "cpu", repeats=1)
    assert r["n"] == 4 and r["device"] == "cpu" and r["method"] == "pillow"
    assert r["max_abs"] <= PIPELINE_MAX_ABS and r["mean_abs"] <= PIPELINE_MEAN_ABS
    assert r["numpy_ms_per_image"] > 0 and r["torch_ms_per_image"] > 0
    r = compare_with_numpy(ct_hu[:4], 64, "cpu", hu=True, method="interpolate", repeats=1)
    assert r["max_abs"] <= INTERP_MAX_ABS
