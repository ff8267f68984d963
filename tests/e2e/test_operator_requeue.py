"""An export that gave up, re-queued by the operator once the PACS is back, and a study's results sent
again to a second PACS: ``triage export`` against a running ``triage serve`` and dcmtk's storescp."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from db.models import Export, ExportAttempt, ExportState
from ops.bench.series import build_ct_series
from ops.dcmtk import dcmtk
from tests.conftest import require_tools
from tests.dcmtk import DCMTK_ENV, storescu
from tests.e2e.node import NodeProcess, node_env, node_sessions, wait_for
from tests.services import free_port, port_open

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _triage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], env={**base, **env}, capture_output=True,
                          text=True, timeout=120)


def _storescp(port: int, folder: Path, ae: str) -> subprocess.Popen[bytes]:
    folder.mkdir()
    pacs = subprocess.Popen([dcmtk("storescp"), "-aet", ae, "-od", str(folder), str(port)], env=DCMTK_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: port_open(port), 20, f"storescp {ae}")
    return pacs


def test_a_failed_export_is_delivered_after_a_retry_and_a_study_is_sent_to_a_second_pacs(
    tmp_path: Path, axial_ct_files: list[Path],
) -> None:
    require_tools("storescu", "storescp")
    placeholder = socket.socket()  # the PACS port, bound and not listening: refused until it comes back
    placeholder.bind(("127.0.0.1", 0))
    pacs_port = placeholder.getsockname()[1]
    env = node_env(tmp_path, destinations=f"PACS@127.0.0.1:{pacs_port}", quiet=1.0, TRIAGE_SWEEP_INTERVAL="0.2",
                   TRIAGE_EXPORT_MAX_ATTEMPTS="2")
    node = NodeProcess("serve", tmp_path, env)
    sessions = node_sessions(env)
    peers: list[subprocess.Popen[bytes]] = []
    try:
        port = int(env["TRIAGE_PORT"])
        node.wait_port(port)
        study = build_ct_series(axial_ct_files, tmp_path / "ct", 3)
        study_uid = str(pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID)
        assert storescu(port, study).returncode == 0

        def export_state() -> ExportState | None:
            with sessions() as session:
                export = session.scalars(select(Export)).one_or_none()
                return export.state if export is not None else None

        wait_for(lambda: export_state() == ExportState.failed, 300, "the export to give up", node.log)
        listed = _triage(env, "export", "list", "--state", "failed", "--json")
        (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
        assert row["study_uid"] == study_uid and row["attempts"] == 2 and "not established" in row["last_error"]

        placeholder.close()
        peers.append(_storescp(pacs_port, tmp_path / "pacs", "PACS"))
        retried = _triage(env, "export", "retry", "--failed")
        assert retried.returncode == 0, retried.stderr
        wait_for(lambda: export_state() == ExportState.done, 120, "the re-queued export to go through", node.log)
        with sessions() as session:
            attempts = [(a.attempt, a.ok) for a in session.scalars(select(ExportAttempt).order_by(ExportAttempt.id))]
        assert attempts == [(1, False), (2, False), (1, True)], "a fresh budget; the failed attempts kept"

        second_port = free_port()
        peers.append(_storescp(second_port, tmp_path / "second", "ARCHIVE"))
        sent = _triage(env, "export", "send", study_uid, "--to", f"ARCHIVE@127.0.0.1:{second_port}")
        assert sent.returncode == 0, sent.stderr

        def second_done() -> bool:
            with sessions() as session:
                return session.scalars(select(Export.state).where(Export.destination.startswith("ARCHIVE@"))) \
                    .one_or_none() == ExportState.done

        wait_for(second_done, 120, "the export to the second PACS", node.log)
    finally:
        placeholder.close()
        assert node.stop() == 0
        for peer in peers:
            peer.terminate()
            peer.wait(10)
    first = sorted(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in (tmp_path / "pacs").iterdir())
    second = sorted(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                    for p in (tmp_path / "second").iterdir())
    assert first and first == second, "the second PACS holds the same result objects, same UIDs"
