"""A pynetdicom SCU that sends raw, possibly hostile, bytes: what dcmtk refuses to send."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, _config

from workers.requestor import associate

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def write_raw_instance(path: Path, sop_instance_uid: str, body: bytes, sop_class_uid: str = CT_IMAGE_STORAGE,
                       transfer_syntax: str = EXPLICIT_LE) -> Path:
    """A Part 10 file whose meta is valid and whose data set is exactly ``body``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    with open(path, "wb") as fh:
        fh.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fh, meta, enforce_standard=True)  # type: ignore[arg-type]
        fh.write(body)
    return path


def send_files(port: int, paths: list[Path], calling: str = "RAWSCU", called: str = "TRIAGE",
               sop_class_uid: str = CT_IMAGE_STORAGE) -> list[int | None]:
    """Send each file as it is on disk, without decoding it; return the statuses (None: no answer).

    One presentation context per (SOP class, transfer syntax) found in the files' meta, so a file
    can be sent under a transfer syntax its bytes do not follow.
    """
    from pydicom.filereader import read_file_meta_info

    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title=calling)
        pairs = {(sop_class_uid, EXPLICIT_LE)}
        for path in paths:
            meta = read_file_meta_info(path)
            pairs.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
        for sop_class, syntax in sorted(pairs):
            ae.add_requested_context(sop_class, [syntax])
        assoc = associate(ae, "127.0.0.1", port, ae_title=called)
        assert assoc.is_established, "association refused"
        statuses: list[int | None] = []
        try:
            for path in paths:
                status: Dataset = assoc.send_c_store(path)
                statuses.append(int(status.Status) if "Status" in status else None)
        finally:
            assoc.release()
        return statuses
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
