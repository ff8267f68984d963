"""The listener SIGKILLed in the middle of a 1,000-instance transfer loses nothing it acknowledged."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from db.models import Instance, Job, JobState, Result
from ops.bench.series import build_ct_series
from ops.dcmtk import dcmtk
from tests.conftest import require_tools
from tests.dcmtk import DCMTK_ENV
from tests.e2e.node import NodeProcess, node_env, node_sessions, wait_for
from tests.services import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

_SENT = re.compile(r"Sending file: (.+)$")


def _acknowledged(storescu_log: str) -> list[Path]:
    """Files for which storescu logged a Success response, from its verbose output."""
    acknowledged, current = [], None
    for line in storescu_log.splitlines():
        match = _SENT.search(line)
        if match:
            current = Path(match.group(1).strip())
        elif "Received Store Response (Success)" in line and current is not None:
            acknowledged.append(current)
            current = None
    return acknowledged


def test_sigkill_mid_transfer_keeps_every_acknowledged_instance(
    tmp_path: Path, original_axial_ct_files: list[Path], scenario_report: Callable[..., None],
) -> None:
    require_tools("storescu")
    files = build_ct_series(original_axial_ct_files, tmp_path / "study", 1000)
    port = free_port()
    # the quiet period outlasts the restart and the retry: the study completes once, whole
    env = node_env(tmp_path, port=port, quiet=30, TRIAGE_KEY_SLICES="1")
    node = NodeProcess("listen", tmp_path, env)
    node.wait_port(port)
    sessions = node_sessions(env)

    def stored() -> int:
        with sessions() as session:
            return len(session.scalars(select(Instance.id)).all())

    sender = subprocess.Popen([dcmtk("storescu"), "-v", "-aec", "TRIAGE", "127.0.0.1", str(port), *map(str, files)],
                              env=DCMTK_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: stored() >= 150, 120, "the transfer to be under way")
    node.kill_group()  # SIGKILL: no shutdown handler runs
    output = sender.communicate(timeout=120)[0]
    assert sender.returncode != 0, "the transfer should have been cut"
    acknowledged = _acknowledged(output)
    assert 100 <= len(acknowledged) < 1000

    # restart: every acknowledged instance is on disk, intact, and in the database
    node = NodeProcess("serve", tmp_path, env, name="serve-after-crash")
    try:
        node.wait_port(port)
        with sessions() as session:
            rows = {r.sop_instance_uid: r for r in session.scalars(select(Instance))}
        storage = tmp_path / "node" / "storage"
        assert not any((storage / "tmp").iterdir()), "temporary files survived the restart"
        for path in acknowledged:
            sent = pydicom.dcmread(path)
            row = rows.get(sent.SOPInstanceUID)
            assert row is not None, f"acknowledged {path.name} has no row"
            kept = pydicom.dcmread(storage / row.path)
            assert kept == sent, f"acknowledged {path.name} differs on disk"
        # every row has its file: nothing half-written was recorded
        for row in rows.values():
            assert (storage / row.path).is_file()

        # the sender's retry of everything completes the study, each instance once
        retry = subprocess.run([dcmtk("storescu"), "-aec", "TRIAGE", "+sd", "-R", "127.0.0.1", str(port),
                                str(files[0].parent)], env=DCMTK_ENV, capture_output=True, text=True, timeout=600)
        assert retry.returncode == 0, retry.stderr[-2000:]
        with sessions() as session:
            uids = session.scalars(select(Instance.sop_instance_uid)).all()
        assert len(uids) == len(set(uids)) == 1000

        def finished() -> bool:
            with sessions() as session:
                return session.scalar(select(Job.state)) in (JobState.done, JobState.failed)

        wait_for(finished, 900, "the study to be analysed", node.log)
        with sessions() as session:
            jobs = session.scalars(select(Job)).all()
            results = session.scalars(select(Result)).all()
        assert [j.state for j in jobs] == [JobState.done], "analysed more than once, or not at all"
        assert len(results) == 1 and len(results[0].slice_scores["scores"]) == 1000
    finally:
        node.stop()
    intact = sum(1 for path in acknowledged if pydicom.dcmread(path).SOPInstanceUID in rows)
    scenario_report("listener SIGKILL mid-transfer, restart, sender retries", sent=1000 + 1000,
                    acknowledged=len(acknowledged) + 1000, stored=len(set(uids)), analysed=len(results),
                    lost=len(acknowledged) - intact, duplicated=len(uids) - len(set(uids)),
                    note=f"{len(acknowledged)} acknowledged before the kill")
