"""The listener as a service: study completion over real associations, SIGTERM, the README command."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Instance, OutboxMessage, Study, StudyState
from db.session import make_engine, make_sessionmaker
from listener.completion import CompletionSweeper
from listener.service import freeze_startup_heap
from ops.bench.series import build_ct_series, new_uid
from ops.dcmtk import dcmtk
from tests.conftest import REPO, require_tools
from tests.dcmtk import DCMTK_ENV, echoscu, storescu
from tests.services import free_port, port_open

pytestmark = pytest.mark.dcmtk


def _wait(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def _outbox_rows(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count(OutboxMessage.id))) or 0)


def test_quiet_study_is_completed_once_and_reopened_by_a_late_instance(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], axial_ct_files: list[Path],
    tmp_path: Path,
) -> None:
    require_tools("storescu")
    quiet = 1.5
    listener = listener_factory(sessions)
    sweeper = CompletionSweeper(sessions, quiet_seconds=quiet, ceiling_seconds=600, interval=0.2)
    sweeper.start()
    try:
        study_uid = new_uid()
        first = build_ct_series(axial_ct_files, tmp_path / "a", 5, study_uid=study_uid)
        # two associations with a pause shorter than the quiet period: one study, one completion
        assert storescu(listener.port, first[:3]).returncode == 0
        time.sleep(quiet / 2)
        assert storescu(listener.port, first[3:]).returncode == 0
        sent_at = time.monotonic()
        _wait(lambda: _outbox_rows(sessions) == 1, 15, "the study to complete")
        assert time.monotonic() - sent_at >= quiet * 0.9
        time.sleep(quiet * 2)
        assert _outbox_rows(sessions) == 1, "completed more than once"
        with sessions() as session:
            study = session.scalar(select(Study).where(Study.study_uid == study_uid))
            assert study is not None and study.state == StudyState.complete and study.instance_count == 5

        late = build_ct_series(axial_ct_files[:1], tmp_path / "late", 1, study_uid=study_uid, series_number=9)
        assert storescu(listener.port, late).returncode == 0
        with sessions() as session:
            assert session.scalar(select(Study.state).where(Study.study_uid == study_uid)) == StudyState.receiving
        _wait(lambda: _outbox_rows(sessions) == 2, 15, "the re-opened study to complete again")
        with sessions() as session:
            payloads = [m.payload for m in session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]
        assert [p["study_uid"] for p in payloads] == [study_uid, study_uid]
        assert payloads[0]["job_id"] != payloads[1]["job_id"]
    finally:
        sweeper.stop()


def _listen(tmp_path: Path, port: int, *args: str, command: list[str] | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update({"TRIAGE_DATA_DIR": str(tmp_path / "node"), "TRIAGE_PORT": str(port), "TRIAGE_QUIET_SECONDS": "600",
                "TRIAGE_COMPLETION_CEILING_SECONDS": "600"})
    cmd = command or [sys.executable, "-m", "ops.cli", "listen", *args]
    log = open(tmp_path / "listener.log", "w")  # a file, not a pipe: a full pipe would stall the node
    process = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not port_open(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"listener did not start: {(tmp_path / 'listener.log').read_text()[-2000:]}")
        time.sleep(0.2)
    return process


def test_sigterm_finishes_running_transfers_and_refuses_new_associations(
    tmp_path: Path, axial_ct_files: list[Path],
) -> None:
    require_tools("storescu", "echoscu")
    files = build_ct_series(axial_ct_files, tmp_path / "study", 400)
    port = free_port()
    process = _listen(tmp_path, port, "--grace", "60")
    sessions = make_sessionmaker(make_engine(f"sqlite:///{tmp_path / 'node' / 'triage.db'}"))

    def stored() -> int:
        with sessions() as session:
            return int(session.scalar(select(func.count(Instance.id))) or 0)

    sender = subprocess.Popen([dcmtk("storescu"), "-aec", "TRIAGE", "+sd", "-R", "127.0.0.1", str(port),
                               str(files[0].parent)], env=DCMTK_ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        _wait(lambda: stored() >= 20, 60, "the transfer to be under way")
        process.send_signal(signal.SIGTERM)
        _wait(lambda: not port_open(port), 10, "the listening socket to close")
        assert echoscu(port).returncode != 0, "a new association was accepted after SIGTERM"
        output = sender.communicate(timeout=120)[0]
        assert sender.returncode == 0, output[-2000:]
        assert process.wait(timeout=60) == 0
    finally:
        for p in (sender, process):
            if p.poll() is None:
                p.kill()
    assert stored() == 400
    log = (tmp_path / "listener.log").read_text()
    assert '"event":"process.signal"' in log and '"aborted_associations":0' in log


def test_the_start_takes_back_a_row_whose_file_never_got_its_name(
    tmp_path: Path, axial_ct_files: list[Path],
) -> None:
    """The listener commits a row while its file is renamed: after a crash between the two, the next start
    removes the row, and the sender's re-send stores the instance again."""
    require_tools("storescu")
    files = build_ct_series(axial_ct_files, tmp_path / "study", 3)
    port = free_port()
    sessions = make_sessionmaker(make_engine(f"sqlite:///{tmp_path / 'node' / 'triage.db'}"))

    def stored() -> dict[str, str]:
        with sessions() as session:
            return dict(session.execute(select(Instance.sop_instance_uid, Instance.path)).tuples().all())

    process = _listen(tmp_path, port)
    try:
        assert storescu(port, files).returncode == 0
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    rows = stored()
    assert len(rows) == 3
    lost_uid, lost_path = sorted(rows.items())[0]
    (tmp_path / "node" / "storage" / lost_path).unlink()  # as if its rename never reached the disk

    process = _listen(tmp_path, port)
    try:
        assert set(stored()) == set(rows) - {lost_uid}
        assert '"event":"listener.recovery.rows_taken_back"' in (tmp_path / "listener.log").read_text()
        assert storescu(port, files).returncode == 0  # the sender's re-send
        assert stored() == rows
        assert (tmp_path / "node" / "storage" / lost_path).is_file()
        with sessions() as session:
            assert session.scalar(select(Study.instance_count)) == 3
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def test_readme_run_command_starts_a_node_with_embedded_defaults(tmp_path: Path) -> None:
    """The README's run command, as a new user runs it: nothing to configure, nothing to start first."""
    require_tools("echoscu")
    readme = (REPO / "README.md").read_text()
    assert "bash ops/run.sh" in readme
    port = free_port()
    process = _listen(tmp_path, port, command=["bash", str(REPO / "ops" / "run.sh")])
    try:
        assert echoscu(port).returncode == 0
        assert (tmp_path / "node" / "triage.db").is_file()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def test_startup_objects_are_left_out_of_later_collections() -> None:
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 10_000  # this test process's modules, at least
    finally:
        gc.unfreeze()
