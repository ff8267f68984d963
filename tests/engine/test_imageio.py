"""Reading inputs: real DICOM CT (HU, lung window), real CR (MONOCHROME1), compressed syntaxes,
raster files with odd names and formats, and clear errors on unreadable input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from engine.imageio import ImageReadError, dataset_to_gray, dataset_to_hu, read_image
from engine.preprocess import window_hu


def test_real_ct_is_decoded_to_hounsfield_units_then_lung_window(ct_dicom: Path) -> None:
    ds = pydicom.dcmread(ct_dicom)
    hu = dataset_to_hu(ds)
    assert hu.shape == (ds.Rows, ds.Columns)
    assert hu.min() <= -900, "air outside the body must be near -1000 HU"
    assert hu.max() >= 200, "bone must be well above soft tissue"
    gray = dataset_to_gray(ds)
    assert gray.dtype == np.uint8
    assert np.array_equal(gray, window_hu(hu))
    assert np.array_equal(read_image(ct_dicom), gray)
    # the centre of a chest slice (mediastinum / spine) is brighter than the outside air
    h, w = gray.shape
    assert gray[h // 2 - 20:h // 2 + 20, w // 2 - 20:w // 2 + 20].mean() > gray[:20, :20].mean() + 100


def test_real_cr_monochrome1_is_inverted_so_bone_is_bright(cr_dicom: Path) -> None:
    ds = pydicom.dcmread(cr_dicom)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    gray = dataset_to_gray(ds)
    assert gray.shape == (1955, 1841) and gray.dtype == np.uint8
    h, w = gray.shape
    lung = gray[int(0.3 * h):int(0.5 * h), int(0.2 * w):int(0.35 * w)].mean()
    spine = gray[int(0.3 * h):int(0.5 * h), int(0.48 * w):int(0.52 * w)].mean()
    assert spine > lung + 20, f"spine {spine:.0f} should be brighter than lung {lung:.0f}"
    flipped = ds.copy()
    flipped.PhotometricInterpretation = "MONOCHROME2"
    assert np.array_equal(dataset_to_gray(flipped), 255 - gray)


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_jp2klossless.dcm", "JPEGLSNearLossless_16.dcm",
                                  "SC_rgb_jpeg_dcmtk.dcm", "MR_small_RLE.dcm", "CT_small.dcm"])
def test_compressed_and_other_test_files_decode(name: str) -> None:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not shipped with this pydicom")
    gray = read_image(path)
    assert gray.ndim == 2 and gray.dtype == np.uint8 and gray.max() > gray.min()


def test_covid_ct_png_named_files_that_are_jpeg_with_odd_names_read(shared_data: Path) -> None:
    folder = shared_data / "covid-ct" / "Images"
    odd = [p for p in folder.rglob("*.png") if p.read_bytes()[:3] == b"\xff\xd8\xff"]
    assert odd, "the data set's README says some .png files are JPEG"
    named = [p for p in folder.rglob("*") if p.is_file() and ("%" in p.name or " " in p.name)]
    for p in odd[:3] + named[:3]:
        gray = read_image(p)
        assert gray.ndim == 2 and gray.dtype == np.uint8


def test_unreadable_inputs_raise_image_read_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="junk.png"):
        read_image(junk)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.jpg")
    ct = get_testdata_file("CT_small.dcm", download=False)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(Path(ct).read_bytes()[:2000])
    with pytest.raises(ImageReadError):
        read_image(truncated)


def test_data_set_without_pixels_is_refused() -> None:
    ds = pydicom.Dataset()
    ds.Modality = "SR"
    ds.SOPInstanceUID = "1.2.3"
    with pytest.raises(ImageReadError, match="no pixel data"):
        dataset_to_gray(ds)


def test_malformed_attributes_raise_image_read_error_only() -> None:
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    bad_rows = ct.copy()
    bad_rows.Rows = 4000
    with pytest.raises(ImageReadError):
        dataset_to_gray(bad_rows)
    bad_frames = ct.copy()
    bad_frames.NumberOfFrames = 3
    with pytest.raises(ImageReadError):
        dataset_to_gray(bad_frames)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the damaged values it reads
def test_corrupted_bytes_give_an_image_or_image_read_error(tmp_path: Path) -> None:
    """Random byte damage to a real file: the decoder either returns an image or raises ImageReadError."""
    data = Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes()
    rng = np.random.default_rng(7)
    for i in range(40):
        buf = bytearray(data)
        for pos in rng.integers(132, 1200, size=4):  # the header region, where lengths and VRs live
            buf[pos] = int(rng.integers(0, 256))
        path = tmp_path / f"fuzz{i}.dcm"
        path.write_bytes(bytes(buf))
        try:
            gray = read_image(path)
        except ImageReadError:
            continue
        assert gray.dtype == np.uint8 and gray.ndim == 2
