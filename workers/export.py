"""Sending result objects to a PACS by C-STORE (one association per attempt)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ops.config import parse_destination
from workers.requestor import associate

log = logging.getLogger("triage.workers.export")

_UNCOMPRESSED = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


class ExportFailed(RuntimeError):
    """The destination could not be reached or did not accept every object; retry later."""


def client_tls_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """TLS for exports: verify the PACS against ``ca``; present ``cert`` when the PACS asks for one."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # PACS certificates name AE hosts inconsistently; the CA is what counts
    if cert is not None and key is not None:
        context.load_cert_chain(certfile=cert, keyfile=key)
    return context


def send_files(destination: str, files: Sequence[Path], *, calling_ae: str, timeout: float = 30.0,
               tls: ssl.SSLContext | None = None) -> None:
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
    try:
        assoc = associate(ae, host, port, ae_title=ae_title, tls_args=(tls, host) if tls is not None else None)
    except (ssl.SSLError, OSError) as exc:
        raise ExportFailed(f"TLS or network failure towards {destination}: {exc}") from exc
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
