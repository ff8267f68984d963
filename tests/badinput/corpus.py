"""A corpus of malformed and hostile DICOM, generated from a real CT slice.

Each case is the data set part of a C-STORE (what a peer puts on the wire after the command), with
the SOP Class and Instance UIDs the request will carry. ``verdict`` is what the listener must do:
``refuse`` (a failure status) or ``store`` (it is valid DICOM; whether it can be analysed is the
worker's call, which must then end as "not applicable" or "failed" with a reason).
"""

from __future__ import annotations

import copy
import struct
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from ops.bench.series import new_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    verdict: str  # "refuse" or "store"
    transfer_syntax: str = "1.2.840.10008.1.2.1"


def encode_data_set(ds: Dataset, syntax: UID = ExplicitVRLittleEndian) -> bytes:
    """The data set alone, as a C-STORE carries it (no file meta), in ``syntax``'s VR and byte order."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = syntax.is_little_endian
    buffer.is_implicit_VR = syntax.is_implicit_VR
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _element(group: int, elem: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    """One explicit-VR little-endian element, with an optionally lying length."""
    n = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
        return struct.pack("<HH", group, elem) + vr + b"\0\0" + struct.pack("<I", n) + value
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", n) + value


def build_corpus(ct_slice: Path) -> list[Case]:
    template = pydicom.dcmread(ct_slice)
    cases: list[Case] = []

    def fresh() -> Dataset:
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID = new_uid()
        ds.SeriesInstanceUID = new_uid()
        ds.SOPInstanceUID = new_uid()
        return ds

    def add(name: str, ds: Dataset, verdict: str, body: bytes | None = None,
            transfer_syntax: str = "1.2.840.10008.1.2.1") -> None:
        cases.append(Case(name, body if body is not None else encode_data_set(ds), str(ds.SOPClassUID),
                          str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), verdict, transfer_syntax))

    ds = fresh()
    add("truncated in the header", ds, "refuse", encode_data_set(ds)[:700])
    ds = fresh()
    add("truncated in the pixel data", ds, "refuse", encode_data_set(ds)[: len(encode_data_set(ds)) // 2])

    ds = fresh()
    del ds.PixelData
    add("missing pixel data", ds, "store")

    ds = fresh()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 4]
    add("pixel data shorter than rows x columns", ds, "store")

    ds = fresh()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    add("bits allocated 1 with 16-bit data", ds, "store")

    ds = fresh()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    add("bits allocated 32 with 16-bit data", ds, "store")

    ds = fresh()
    ds.NumberOfFrames = 5
    add("multi-frame claim on a single frame", ds, "store")

    ds = fresh()
    ds.Rows = 0
    add("zero rows", ds, "store")

    ds = fresh()
    body = encode_data_set(ds)
    # a private element declaring almost 4 GB, placed where group 0009 belongs (before PatientName)
    at = body.find(struct.pack("<HH", 0x0010, 0x0010))
    hostile = _element(0x0009, 0x0010, b"OB", b"\0" * 8, length=0xFFFFFFF0)
    add("huge declared length", ds, "refuse", body[:at] + hostile + body[at:])

    ds = fresh()
    raw = encode_data_set(ds)
    # (0028,0010) Rows encoded with VR "XX": a VR that does not exist
    idx = raw.find(struct.pack("<HH", 0x0028, 0x0010))
    wrong_vr = raw[:idx + 4] + b"XX" + raw[idx + 6:] if idx >= 0 else raw
    add("unknown VR", ds, "store", wrong_vr)  # pydicom reads it; the worker must then cope

    ds = fresh()  # (a C-STORE request cannot carry one, so the data set's Study UID does)
    ds.StudyInstanceUID = "1." + "2" * 70
    add("UID longer than 64 characters", ds, "refuse")

    for crafted in ("../../../../tmp/evil", "1.2.3/4", "1.2.3\\4"):
        ds = fresh()
        ds.SOPInstanceUID = crafted
        add(f"UID with path characters {crafted!r}", ds, "refuse")

    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = new_uid()
    ds.StudyInstanceUID = new_uid()
    ds.SeriesInstanceUID = new_uid()
    add("identity only, nothing else", ds, "store")

    empty_uid = new_uid()
    cases.append(Case("empty data set", b"", CT_IMAGE, empty_uid, "", "refuse"))

    ds = fresh()
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.Modality = "DOC"
    del ds.PixelData
    ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    add("non-image SOP class (encapsulated PDF)", ds, "store")

    ds = fresh()  # negotiated as JPEG baseline, sent as native pixels
    add("lying transfer syntax (native pixels, JPEG negotiated)", ds, "store",
        transfer_syntax="1.2.840.10008.1.2.4.50")
    return cases
