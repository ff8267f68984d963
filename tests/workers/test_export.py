"""C-STORE export to a real peer (dcmtk's storescp on loopback) and the failure when it is down."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from ops.bench.series import copy_with_new_identity
from ops.dcmtk import dcmtk
from tests.conftest import require_tools
from tests.dcmtk import DCMTK_ENV
from tests.services import free_port, port_open
from workers.export import ExportFailed, send_files


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    require_tools("storescp")
    port, folder = free_port(), tmp_path / "received"
    folder.mkdir()
    process = subprocess.Popen([dcmtk("storescp"), "-aet", "PACS", "-od", str(folder), str(port)], env=DCMTK_ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not port_open(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    yield port, folder
    process.terminate()
    process.wait(10)


def test_files_reach_the_destination(storescp: tuple[int, Path], tmp_path: Path, ct_files: list[Path],
                                     cr_file: Path) -> None:
    port, folder = storescp
    files = [copy_with_new_identity(ct_files[0], tmp_path / "a.dcm"), copy_with_new_identity(cr_file, tmp_path / "b.dcm")]
    send_files(f"PACS@127.0.0.1:{port}", files, calling_ae="TRIAGE")
    received = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in folder.iterdir()}
    assert received == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}


def test_destination_down_raises_export_failed(tmp_path: Path, ct_files: list[Path]) -> None:
    file = copy_with_new_identity(ct_files[0], tmp_path / "a.dcm")
    with pytest.raises(ExportFailed, match="not established"):
        send_files(f"PACS@127.0.0.1:{free_port()}", [file], calling_ae="TRIAGE", timeout=5)


def test_a_peer_that_refuses_us_raises_export_failed(sessions, listener_factory, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                   ct_files: list[Path]) -> None:
    peer = listener_factory(sessions, allowed_aes=["SOMEONE"])  # the node itself as a strict peer
    file = copy_with_new_identity(ct_files[0], tmp_path / "a.dcm")
    with pytest.raises(ExportFailed, match="refused us as TRIAGE"):
        send_files(f"TRIAGE@127.0.0.1:{peer.port}", [file], calling_ae="TRIAGE", timeout=5)


def test_export_over_tls_with_a_client_certificate(sessions, listener_factory, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                   ct_files: list[Path], pki: dict[str, Path]) -> None:
    from listener.server import make_ssl_context
    from workers.export import client_tls_context

    server = make_ssl_context(pki["server_pem"], pki["server_key"], pki["ca_pem"], require_client_cert=True)
    peer = listener_factory(sessions, ssl_context=server)  # the node itself as a TLS PACS
    file = copy_with_new_identity(ct_files[0], tmp_path / "a.dcm")
    send_files(f"TRIAGE@127.0.0.1:{peer.port}", [file], calling_ae="TRIAGE",
               tls=client_tls_context(pki["ca_pem"], pki["client_pem"], pki["client_key"]))
    assert len(list(peer.store.root.rglob("*.dcm"))) == 1
    with pytest.raises(ExportFailed):  # no client certificate: the PACS refuses the handshake
        send_files(f"TRIAGE@127.0.0.1:{peer.port}", [file], calling_ae="TRIAGE", timeout=5,
                   tls=client_tls_context(pki["ca_pem"]))
    with pytest.raises(ExportFailed):  # plain TCP to a TLS port
        send_files(f"TRIAGE@127.0.0.1:{peer.port}", [file], calling_ae="TRIAGE", timeout=5)
