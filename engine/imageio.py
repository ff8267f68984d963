"""Read an input image (PNG/JPEG file, DICOM file or pydicom Dataset) to a greyscale uint8 array.

The output is what :func:`engine.preprocess.preprocess` takes. For CT the DICOM path applies
the modality LUT (to HU) and then the lung window, exactly as the covid-ct training images were
displayed; for CR/DX it applies the VOI LUT or window the modality stored, and inverts
MONOCHROME1 so that bone is bright as in the training X-rays. Anything that cannot be read raises
:class:`ImageReadError` naming the input.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.preprocess import LUNG_WINDOW_CENTER, LUNG_WINDOW_WIDTH, to_uint8, window_hu

__all__ = [
    "ImageReadError",
    "dataset_to_gray",
    "dataset_to_hu",
    "is_dicom_file",
    "read_dicom",
    "read_image",
    "read_raster",
]

#: Modalities whose pixel data are Hounsfield units after the modality LUT.
_HU_MODALITIES = frozenset({"CT"})
#: SOP Class UIDs of CT images (CT Image Storage, Enhanced CT Image Storage, Legacy Converted).
_CT_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1",
                             "1.2.840.10008.5.1.4.1.1.2.2"})


#: What pydicom raises for a malformed LUT or window element.
_LUT_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, ZeroDivisionError)


class ImageReadError(Exception):
    """An input could not be decoded to a greyscale image.

    Attributes
    ----------
    source
        The path (or a description of the data set) that failed.
    reason
        Why, in words.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot read image {source!r}: {reason}")
        self.source = source
        self.reason = reason


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """True if the file has the DICOM Part 10 preamble ('DICM' at byte 128)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_image(path: str | os.PathLike[str]) -> NDArray[np.uint8]:
    """Read a PNG/JPEG/other raster or a DICOM file to a 2-D uint8 greyscale array.

    The format is decided by content, not by extension (some covid-ct files named ``.png`` are
    JPEG).

    Raises
    ------
    ImageReadError
        If the file is missing, empty, truncated or in no format we decode.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(str(path), "no such file")
    if is_dicom_file(p) or p.suffix.lower() in (".dcm", ".dicom"):
        return read_dicom(p)
    return read_raster(p)


def read_raster(path: str | os.PathLike[str]) -> NDArray[np.uint8]:
    """Read a raster image with Pillow, converting any mode (L, RGB, RGBA, I;16, P) to 8-bit grey."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return to_uint8(np.asarray(im))
            return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(str(path), f"not a decodable image ({exc})") from exc


def read_dicom(path: str | os.PathLike[str], frame: int = 0) -> NDArray[np.uint8]:
    """Read a DICOM file and decode it with :func:`dataset_to_gray`."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, force=not is_dicom_file(path))
    except (InvalidDicomError, OSError, EOFError, struct.error, *_DECODE_ERRORS) as exc:
        raise ImageReadError(str(path), f"not a readable DICOM file ({exc})") from exc
    return dataset_to_gray(ds, frame=frame, source=str(path))


def _pixel_array(ds: Any, source: str) -> NDArray:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(source, "the data set has no pixel data")
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises many types for unsupported/corrupt pixel data
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageReadError(source, f"pixel data cannot be decoded (transfer syntax {ts}): {exc}") from exc


def _frame(arr: NDArray, ds: Any, frame: int, source: str) -> NDArray:
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        if not 0 <= frame < frames:
            raise ImageReadError(source, f"frame {frame} out of range (0..{frames - 1})")
        arr = arr[frame]
    elif frame != 0:
        raise ImageReadError(source, "single-frame data set: only frame 0 exists")
    if samples > 1 or arr.ndim == 3:
        arr = to_uint8(arr) if arr.ndim == 3 else arr
    return arr


def _rescale(ds: Any, frame: int) -> tuple[float, float]:
    """Rescale slope and intercept, also from Enhanced CT functional groups."""
    slope, intercept = getattr(ds, "RescaleSlope", None), getattr(ds, "RescaleIntercept", None)
    if slope is None or intercept is None:
        for seq_name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
            seq = getattr(ds, seq_name, None)
            if not seq:
                continue
            item = seq[frame] if seq_name.startswith("PerFrame") and len(seq) > frame else seq[0]
            pvt = getattr(item, "PixelValueTransformationSequence", None)
            if pvt:
                slope = getattr(pvt[0], "RescaleSlope", slope)
                intercept = getattr(pvt[0], "RescaleIntercept", intercept)
                break
    return float(slope if slope is not None else 1.0), float(intercept if intercept is not None else 0.0)


def _is_ct(ds: Any) -> bool:
    return str(getattr(ds, "Modality", "")).upper() in _HU_MODALITIES or \
        str(getattr(ds, "SOPClassUID", "")) in _CT_SOP_CLASSES


def _dataset_to_hu(ds: Any, frame: int, src: str) -> NDArray[np.float32]:
    if not _is_ct(ds):
        raise ImageReadError(src, f"modality {getattr(ds, 'Modality', '?')} has no Hounsfield units")
    arr = _frame(_pixel_array(ds, src), ds, frame, src)
    if arr.ndim != 2:
        raise ImageReadError(src, f"expected a greyscale CT frame, got shape {arr.shape}")
    slope, intercept = _rescale(ds, frame)
    return (arr.astype(np.float32) * slope + intercept).astype(np.float32)


def dataset_to_hu(ds: Any, frame: int = 0, source: str | None = None) -> NDArray[np.float32]:
    """Hounsfield units of one CT frame (modality LUT = rescale slope/intercept).

    Raises
    ------
    ImageReadError
        If the data set is not a CT image or its pixels cannot be decoded.
    """
    src = source or _describe(ds)
    return _guarded(src, lambda: _dataset_to_hu(ds, frame, src))


#: What malformed attributes (fuzzed lengths, bad numbers, odd shapes) raise while decoding.
_DECODE_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError, NotImplementedError,
                  RuntimeError, MemoryError, struct.error)


def _guarded(src: str, decode: Callable[[], NDArray]) -> Any:
    """Run ``decode``; any error of a malformed data set becomes :class:`ImageReadError`."""
    try:
        return decode()
    except ImageReadError:
        raise
    except _DECODE_ERRORS as exc:
        raise ImageReadError(src, f"malformed image attributes ({type(exc).__name__}: {exc})") from exc


def _describe(ds: Any) -> str:
    return f"DICOM data set {getattr(ds, 'SOPInstanceUID', '(no SOP Instance UID)')}"


def dataset_to_gray(ds: Any, frame: int = 0, source: str | None = None,
                    window: tuple[float, float] = (LUNG_WINDOW_CENTER, LUNG_WINDOW_WIDTH)) -> NDArray[np.uint8]:
    """Decode a pydicom Dataset to the greyscale uint8 image the models were trained on.

    Parameters
    ----------
    ds
        A :class:`pydicom.dataset.Dataset` holding an image (compressed transfer syntaxes are
        decoded by pylibjpeg / openjpeg / JPEG-LS plug-ins).
    frame
        Frame index for multi-frame objects.
    source
        Name used in error messages (defaults to the SOP Instance UID).
    window
        (centre, width) in HU applied to CT; the default is the lung window.

    Returns
    -------
    numpy.ndarray
        2-D uint8 array: CT -> HU -> ``window``; CR/DX and others -> VOI LUT or stored window
        (else a 0.5-99.5 percentile stretch), MONOCHROME1 inverted so that air is dark.

    Raises
    ------
    ImageReadError
        If the pixel data are missing or cannot be decoded.
    """
    src = source or _describe(ds)
    return _guarded(src, lambda: _dataset_to_gray(ds, frame, src, window))


def _dataset_to_gray(ds: Any, frame: int, src: str, window: tuple[float, float]) -> NDArray[np.uint8]:
    if _is_ct(ds):
        return window_hu(_dataset_to_hu(ds, frame, src), center=window[0], width=window[1])

    arr = _frame(_pixel_array(ds, src), ds, frame, src)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return to_uint8(arr)
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    except _LUT_ERRORS:  # a broken modality LUT should not stop the image: fall back to stored values
        values = arr.astype(np.float64)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
        try:
            values = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
        except _LUT_ERRORS:  # a broken VOI LUT / window: use the percentile stretch below
            has_voi = False
    if not has_voi:
        finite = values[np.isfinite(values)]
        if finite.size:
            lo, hi = np.percentile(finite, [0.5, 99.5])
            if hi > lo:
                values = np.clip(values, lo, hi)
    gray = to_uint8(values)
    if photometric == "MONOCHROME1":
        gray = (255 - gray).astype(np.uint8)
    return gray
