"""The listener's own File Meta Information encoder writes what pynetdicom and pydicom would."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from listener.filemeta import PREAMBLE, file_meta_bytes

CT = "1.2.840.10008.5.1.4.1.1.2"  # 25 characters: padded
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


@pytest.mark.parametrize("transfer_syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                                             DeflatedExplicitVRLittleEndian, JPEGLosslessSV1, RLELossless])
@pytest.mark.parametrize("sop_class", [CT, ENHANCED_CT])
@pytest.mark.parametrize("sop_instance", ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498." + "1" * 38])
def test_bytes_equal_pynetdicoms_encoding(transfer_syntax: str, sop_class: str, sop_instance: str) -> None:
    expected = PREAMBLE + encode_file_meta(create_file_meta(
        sop_class_uid=pydicom.uid.UID(sop_class), sop_instance_uid=pydicom.uid.UID(sop_instance),
        transfer_syntax=pydicom.uid.UID(transfer_syntax)))

    assert file_meta_bytes(sop_class, sop_instance, transfer_syntax) == expected


def test_pydicom_reads_it_back() -> None:
    meta = file_meta_bytes(CT, "1.2.345", ExplicitVRLittleEndian)
    read = pydicom.dcmread(io.BytesIO(meta + b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100")).file_meta
    assert read.MediaStorageSOPClassUID == CT
    assert read.MediaStorageSOPInstanceUID == "1.2.345"
    assert read.TransferSyntaxUID == ExplicitVRLittleEndian
    assert read.FileMetaInformationGroupLength == len(meta) - len(PREAMBLE) - 12


@pytest.mark.parametrize("hostile", ["1.2.\u00e9", "1." * 40_000])
def test_hostile_request_uids_never_fail_the_encoding(hostile: str) -> None:
    meta = file_meta_bytes(CT, hostile, ExplicitVRLittleEndian)
    assert meta.startswith(PREAMBLE)  # the instance is refused by the UID check; its file is discarded
