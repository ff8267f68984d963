"""Sending result objects to a PACS by C-STORE (one association per attempt)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ops.config import parse_destination

log = logging.getLogger("triage.workers.export")

_UNCOMPRESSED = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


class ExportFailed(RuntimeError):
    """The destination could not be reached or did not accept every object; retry later."""


def send_files(destination: str, files: Sequence[Path], *, calling_ae: str, timeout: float = 30.0) -> None:
    """C-STORE every file to ``destination`` (AE@host:port) or raise :class:`ExportFailed`."""
    ae_title, host, port = parse_destination(destination)
    datasets = [pydicom.dcmread(path) for path in files]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, _UNCOMPRESSED)
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=ae_title)
    if not assoc.is_established:
        raise ExportFailed(f"association to {destination} was not established (down, or refused us as {calling_ae})")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(status.Status) if status is not None and "Status" in status else None
            if code is None:
                raise ExportFailed(f"{destination} gave no C-STORE response (connection lost)")
            if code not in (0x0000, 0xB000, 0xB006, 0xB007):
                raise ExportFailed(f"{destination} answered 0x{code:04X} for {ds.SOPClassUID.name}")
    finally:
        if assoc.is_established:
            assoc.release()
