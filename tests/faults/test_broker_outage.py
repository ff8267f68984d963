"""Redis stopped while studies complete: the listener keeps accepting, the outbox delivers later."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from db.models import OutboxMessage
from ops.bench.series import build_ct_series, new_uid
from ops.config import load_settings
from tests.conftest import require_tools
from tests.dcmtk import echoscu, storescu
from tests.e2e.node import NodeProcess, node_env, node_sessions, wait_for
from tests.services import free_port, port_open
from workers.celery_app import ANALYSE_TASK, QUEUE, make_celery

pytestmark = pytest.mark.slow


class PrivateRedis:
    """A Redis of this test's own on a loopback port, so stopping it disturbs nobody else."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                                         "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not port_open(self.port):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(20)
            self.process = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = PrivateRedis(free_port())
    server.start()
    yield server
    server.stop()


def test_studies_completed_while_redis_is_down_are_queued_once_it_is_back(
    private_redis: PrivateRedis, tmp_path: Path, axial_ct_files: list[Path], scenario_report: Callable[..., None],
) -> None:
    require_tools("storescu", "echoscu")
    broker = f"redis://127.0.0.1:{private_redis.port}/0"
    port = free_port()
    env = node_env(tmp_path, port=port, broker_url=broker, quiet=1.0, TRIAGE_SWEEP_INTERVAL="0.2")
    node = NodeProcess("listen", tmp_path, env)
    sessions = node_sessions(env)
    try:
        node.wait_port(port)
        private_redis.stop()
        studies = []
        for i in range(3):
            files = build_ct_series(axial_ct_files, tmp_path / f"study{i}", 5, study_uid=new_uid())
            result = storescu(port, files)
            assert result.returncode == 0, result.stderr  # the listener keeps accepting
            studies.append(files)
        assert echoscu(port).returncode == 0

        def unpublished_with_failures() -> bool:
            with sessions() as session:
                rows = session.scalars(select(OutboxMessage)).all()
            # the dispatcher stops a pass at the first failure: the oldest row carries the attempts
            return len(rows) == 3 and all(r.published_at is None for r in rows) and rows[0].attempts >= 2

        wait_for(unpublished_with_failures, 60, "three completions waiting for the broker", node.log)
        assert "dispatcher.publish.failed" in node.log()

        private_redis.start()

        def all_published() -> bool:
            with sessions() as session:
                return all(r.published_at is not None for r in session.scalars(select(OutboxMessage)))

        wait_for(all_published, 120, "the outbox to drain once Redis is back", node.log)
    finally:
        assert node.stop() == 0

    app = make_celery(load_settings(broker_url=broker))
    client = redis.Redis(port=private_redis.port)
    assert client.llen(QUEUE) == 3, "lost or doubled messages"
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(QUEUE)
        jobs = []
        for _ in range(3):
            message = queue.get(timeout=5)
            assert message.headers["task"] == ANALYSE_TASK
            jobs.append(message.payload[0][0])
            message.ack()
        queue.close()
    assert len(set(jobs)) == 3
    scenario_report("Redis stopped while 3 studies complete", sent=15, acknowledged=15, stored=15,
                    lost=3 - len(set(jobs)), duplicated=len(jobs) - len(set(jobs)),
                    note="3 completions queued in the outbox, delivered once Redis returned")
