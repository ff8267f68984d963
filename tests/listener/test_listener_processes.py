"""Several listener processes on one port (TRIAGE_LISTENER_PROCESSES): shared, supervised, drained."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import Instance
from ops.bench.series import build_ct_series, new_uid
from tests.conftest import require_tools
from tests.dcmtk import echoscu, storescu
from tests.e2e.node import NodeProcess, node_env, node_sessions, wait_for

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(300)]


def _start(tmp_path: Path, processes: int, **env: str) -> tuple[NodeProcess, int]:
    """``triage listen`` with ``processes`` listener processes, once every one of them listens."""
    settings = node_env(tmp_path, TRIAGE_LISTENER_PROCESSES=str(processes), **env)
    port = int(settings["TRIAGE_PORT"])
    node = NodeProcess("listen", tmp_path, settings)
    node.wait_port(port)
    wait_for(lambda: len(node.events("listener.started")) == processes, 60, f"{processes} listener processes",
             node.log)
    return node, port


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that may never come is not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_processes_share_the_port_store_each_instance_once_and_stop_together(
        tmp_path: Path, axial_ct_files: list[Path], database_url: str) -> None:
    require_tools("echoscu", "storescu")
    node, port = _start(tmp_path, 2, TRIAGE_QUIET_SECONDS="3600", TRIAGE_DATABASE_URL=database_url)
    try:
        for _ in range(16):  # the kernel spreads associations by their source port
            assert echoscu(port).returncode == 0
        serving = {record["pid"] for record in node.events("listener.assoc.accepted")}
        assert len(serving) == 2, serving

        senders = [build_ct_series(axial_ct_files, tmp_path / f"study{i}", 6, study_uid=new_uid()) for i in range(4)]
        with ThreadPoolExecutor(4) as pool:  # four associations at once, plus one re-send of a study
            results = list(pool.map(lambda files: storescu(port, files), [*senders, senders[0]]))
        assert [r.returncode for r in results] == [0] * 5, [r.stderr[-500:] for r in results]
        with node_sessions(node.env)() as session:
            assert session.scalar(select(func.count(Instance.id))) == 24
            assert session.scalar(select(func.count(func.distinct(Instance.sop_instance_uid)))) == 24

        pids = {int(str(record["pid"])) for record in node.events("listener.started")}
        assert node.stop() == 0
        assert not any(_alive(pid) for pid in pids)
        assert len(node.events("listener.stopped")) == 2
    finally:
        node.stop()


def test_a_listener_process_that_dies_is_restarted(tmp_path: Path) -> None:
    require_tools("echoscu")
    node, port = _start(tmp_path, 2)
    try:
        extra = int(str(node.events("node.child.started")[0]["pid"]))
        os.kill(extra, signal.SIGKILL)

        wait_for(lambda: len(node.events("node.child.started")) == 2, 60, "a new listener process", node.log)
        exited = node.events("node.child.exited")
        assert exited and exited[0]["child"] == "listener-2" and exited[0]["returncode"] == -signal.SIGKILL
        wait_for(lambda: len(node.events("listener.started")) == 3, 60, "the new process to listen", node.log)
        assert all(echoscu(port).returncode == 0 for _ in range(8))
    finally:
        node.stop()


def test_extra_processes_stop_when_the_node_process_is_killed(tmp_path: Path) -> None:
    require_tools("echoscu")
    node, port = _start(tmp_path, 3)
    try:
        extras = [int(str(record["pid"])) for record in node.events("node.child.started")]
        os.kill(node.process.pid, signal.SIGKILL)  # not the group: as if only the node process were killed
        node.process.wait(30)

        wait_for(lambda: not any(_alive(pid) for pid in extras), 60, "the orphaned listener processes to stop",
                 node.log)
        assert echoscu(port).returncode != 0  # nobody serves the port any more
    finally:
        node.stop()
