"""Composing the node's processes: listener + completion + dispatcher, and (for ``serve``) a worker.

``triage listen`` runs the DICOM side and the outbox dispatcher; ``triage worker`` runs analysis and
export; ``triage serve`` runs both, the worker as a supervised child process (restarted if it dies),
so one command gives a small site the whole node.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

from listener.service import build_listener, wait_for_signal
from ops.config import Settings
from ops.logs import event

log = logging.getLogger("triage.node")


def run_node(settings: Settings, *, with_worker: bool, grace_seconds: float = 30.0) -> int:
    from db.migrate import upgrade
    from db.session import make_engine, make_sessionmaker
    from workers.celery_app import make_celery
    from workers.dispatcher import Dispatcher

    engine = make_engine(settings.resolved_database_url, durable=settings.durable_commit)
    upgrade(engine)
    sessions = make_sessionmaker(engine)  # one pool for the listener, the sweeper and the dispatcher
    listener, sweeper = build_listener(settings, sessions)
    dispatcher = Dispatcher(make_celery(settings), sessions)
    supervisor = _WorkerSupervisor() if with_worker else None
    listener.start()
    sweeper.start()
    dispatcher.start()
    if supervisor is not None:
        supervisor.start()
    try:
        wait_for_signal()
    finally:
        listener.stop(grace_seconds)
        sweeper.stop()
        dispatcher.stop()
        if supervisor is not None:
            supervisor.stop(grace_seconds)
    return 0


class _WorkerSupervisor:
    """Keeps one ``triage worker`` child running; restarts it (with backoff) if it dies."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-m", "ops.cli", "worker"], env=os.environ.copy())
        event(log, "node.worker.started", pid=process.pid)
        return process

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            self._process = self._spawn()
            started = time.monotonic()
            while self._process.poll() is None and not self._stop.wait(0.5):
                pass
            if self._stop.is_set():
                return
            event(log, "node.worker.exited", logging.WARNING, returncode=self._process.returncode,
                  restart_in_s=delay)
            delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, 60.0)
            self._stop.wait(delay)

    def stop(self, grace_seconds: float) -> None:
        self._stop.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()  # Celery's warm shutdown: finish the running job
            try:
                process.wait(grace_seconds + 30)
            except subprocess.TimeoutExpired:
                process.kill()
        self._thread.join(5)
