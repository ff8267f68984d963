"""The destination PACS down when results are ready: they arrive after it returns, retries recorded.

The study carries a known patient name and ID, and no log line any of the node's processes wrote
(listener, dispatcher, worker, export) may contain either.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
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

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PATIENT_NAME = "Doe^Jane^Phitestname"
PATIENT_ID = "PHI-99887766"


def test_results_wait_for_the_pacs_to_come_back(
    tmp_path: Path, axial_ct_files: list[Path], scenario_report: Callable[..., None],
) -> None:
    require_tools("storescu", "storescp")
    # hold the PACS port (bound, not listening: connections are refused) so that no ephemeral port of
    # the node's own connections can take it before the PACS comes back
    placeholder = socket.socket()
    placeholder.bind(("127.0.0.1", 0))
    pacs_port = placeholder.getsockname()[1]
    port = free_port()
    env = node_env(tmp_path, port=port, destinations=f"PACS@127.0.0.1:{pacs_port}", quiet=1.0,
                   TRIAGE_SWEEP_INTERVAL="0.2")
    node = NodeProcess("serve", tmp_path, env)
    sessions = node_sessions(env)
    received = tmp_path / "pacs"
    received.mkdir()
    pacs = None
    try:
        node.wait_port(port)
        study = build_ct_series(axial_ct_files, tmp_path / "ct", 4, patient_name=PATIENT_NAME,
                                patient_id=PATIENT_ID)
        assert storescu(port, study).returncode == 0

        def failed_attempts() -> int:
            with sessions() as session:
                return len(session.scalars(select(ExportAttempt).where(ExportAttempt.ok.is_(False))).all())

        # the attempt is committed before its log line is written: wait for both
        wait_for(lambda: failed_attempts() >= 3 and node.log().count('"event":"export.retry"') >= 3, 300,
                 "several failed export attempts, in the database and the logs", node.log)
        with sessions() as session:
            export = session.scalars(select(Export)).one()
            assert export.state == ExportState.retrying and "not established" in (export.last_error or "")

        placeholder.close()
        pacs = subprocess.Popen([dcmtk("storescp"), "-aet", "PACS", "-od", str(received), str(pacs_port)], env=DCMTK_ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(pacs_port), 20, "storescp")

        def delivered() -> bool:
            with sessions() as session:
                return session.scalars(select(Export)).one().state == ExportState.done

        wait_for(delivered, 120, "the export to go through", node.log)
    finally:
        placeholder.close()
        assert node.stop() == 0
        if pacs is not None:
            pacs.terminate()
            pacs.wait(10)
    modalities = sorted(pydicom.dcmread(p, stop_before_pixels=True).Modality for p in received.iterdir())
    assert modalities.count("SR") == 1 and len(modalities) >= 2
    with sessions() as session:
        attempts = session.scalars(select(ExportAttempt).order_by(ExportAttempt.attempt)).all()
        assert attempts[-1].ok and all(not a.ok for a in attempts[:-1]) and len(attempts) >= 4
    scenario_report("destination PACS down, then back", sent=4, acknowledged=4, stored=4, analysed=1, lost=0,
                    duplicated=modalities.count("SR") - 1, note=f"{len(attempts) - 1} failed export attempts first")
    log = node.log()
    for secret in (PATIENT_NAME, "Phitestname", PATIENT_ID, "99887766"):
        assert secret not in log, f"patient data {secret!r} found in the node's logs"
