"""A worker killed in the middle of a job: the job is redelivered and completes, once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import Export, ExportState, Job, JobState, Result
from ops.bench.series import build_ct_series, new_uid
from ops.dcmtk import dcmtk
from tests.conftest import require_tools
from tests.dcmtk import storescu
from tests.e2e.node import NodeProcess, node_env, node_sessions, wait_for
from tests.e2e.test_pipeline import _redis_url
from tests.services import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_killed_worker_job_is_redelivered_and_completed_once(
    tmp_path: Path, axial_ct_files: list[Path], scenario_report: Callable[..., None],
) -> None:
    require_tools("storescu", "storescp")
    import subprocess

    from tests.dcmtk import DCMTK_ENV

    pacs_port = free_port()
    received = tmp_path / "pacs"
    received.mkdir()
    pacs = subprocess.Popen([dcmtk("storescp"), "-aet", "PACS", "-od", str(received), str(pacs_port)], env=DCMTK_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = free_port()
    # a short visibility timeout so the broker redelivers the dead worker's job within the test
    env = node_env(tmp_path, port=port, broker_url=_redis_url(), destinations=f"PACS@127.0.0.1:{pacs_port}",
                   quiet=1.0, TRIAGE_JOB_VISIBILITY_TIMEOUT="20", TRIAGE_SWEEP_INTERVAL="0.2")
    listener = NodeProcess("listen", tmp_path, env)
    worker = NodeProcess("worker", tmp_path, env)
    sessions = node_sessions(env)
    try:
        listener.wait_port(port)
        files = build_ct_series(axial_ct_files, tmp_path / "study", 60, study_uid=new_uid())
        assert storescu(port, files).returncode == 0

        def running() -> bool:
            with sessions() as session:
                return session.scalar(select(Job.state)) == JobState.running

        wait_for(running, 180, "the job to start", worker.log)
        worker.kill_group()  # SIGKILL the worker and its pool: the job was not acknowledged
        with sessions() as session:
            assert session.scalar(select(Job.state)) == JobState.running
            assert session.scalar(select(Result.id)) is None

        worker = NodeProcess("worker", tmp_path, env, name="worker-2")

        def exported() -> bool:
            with sessions() as session:
                return session.scalar(select(Export.state)) == ExportState.done

        wait_for(exported, 300, "the redelivered job to finish and export", worker.log)
    finally:
        worker.stop()
        listener.stop()
        pacs.terminate()
        pacs.wait(10)
    with sessions() as session:
        jobs = session.scalars(select(Job)).all()
        assert len(jobs) == 1 and jobs[0].state == JobState.done and jobs[0].attempts == 2
        assert len(session.scalars(select(Result)).all()) == 1
        sr_uids = [o["sop_instance_uid"] for r in session.scalars(select(Result)) for o in r.outputs
                   if o["kind"] == "sr"]
    import pydicom

    received_sr = [p for p in received.iterdir() if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SR"]
    assert len(received_sr) == 1, "exactly one SR per study and model version reaches the PACS"
    assert pydicom.dcmread(received_sr[0], stop_before_pixels=True).SOPInstanceUID == sr_uids[0]
    scenario_report("worker SIGKILLed mid-job (Redis redelivers)", sent=60, acknowledged=60, stored=60,
                    analysed=1, lost=0, duplicated=len(received_sr) - 1, note="job attempts: 2; one SR in the PACS")
