"""Composing the node's processes: listener + completion + dispatcher, and (for ``serve``) a worker.

``triage listen`` runs the DICOM side and the outbox dispatcher; ``triage worker`` runs analysis and
export; ``triage serve`` runs both, the worker as a supervised child process (restarted if it dies),
so one command gives a small site the whole node. With ``TRIAGE_LISTENER_PROCESSES`` above one,
the extra listener processes on the same port (``listener.extra_process``) are supervised children
too.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

from listener.service import build_listener, freeze_startup_heap, wait_for_signal
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
    dispatcher = Dispatcher(make_celery(settings), sessions, interval=settings.dispatch_interval)
    listener.start()
    # more listener processes on the same port, once this one has bound it (TRIAGE_PORT=0 resolved)
    # and cleaned the temporary folder; they exit cleanly only when told to, so they are restarted
    # whenever they end
    children = [
        _Supervised(f"listener-{index}", [sys.executable, "-m", "listener.extra_process",
                                          "--grace", str(grace_seconds), "--parent", str(os.getpid())],
                    env={**os.environ, "TRIAGE_PORT": str(listener.port)}, grace_seconds=grace_seconds)
        for index in range(2, settings.listener_processes + 1)
    ]
    if with_worker:
        children.append(_Supervised("worker", [sys.executable, "-m", "ops.cli", "worker"], env=dict(os.environ),
                                    grace_seconds=grace_seconds + 30))  # Celery's warm shutdown: the running job
    sweeper.start()
    dispatcher.start()
    for child in children:
        child.start()
    freeze_startup_heap()
    try:
        wait_for_signal()
    finally:
        for child in children:
            child.terminate()  # at once, so every listener process drains its C-STOREs in the same grace
        listener.stop(grace_seconds)
        sweeper.stop()
        dispatcher.stop()
        for child in children:
            child.stop()
    return 0


class _Supervised:
    """Keeps one child process running; restarts it (with backoff) whenever it ends unasked."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], grace_seconds: float) -> None:
        self.name = name
        self._argv = argv
        self._env = env
        self._grace_seconds = grace_seconds
        self._process: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # no child is spawned after terminate() has looked
        self._thread = threading.Thread(target=self._run, name=f"{name}-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(self._argv, env=self._env)
        event(log, "node.child.started", child=self.name, pid=process.pid)
        return process

    def _run(self) -> None:
        delay = 1.0
        while True:
            with self._lock:
                if self._stop.is_set():
                    return
                self._process = self._spawn()
            started = time.monotonic()
            while self._process.poll() is None and not self._stop.wait(0.5):
                pass
            if self._stop.is_set():
                return
            event(log, "node.child.exited", logging.WARNING, child=self.name, returncode=self._process.returncode,
                  restart_in_s=delay)
            delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, 60.0)
            self._stop.wait(delay)

    def terminate(self) -> None:
        """Ask the child to stop (SIGTERM: it finishes what it is doing) and stop restarting it."""
        with self._lock:
            self._stop.set()
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()

    def stop(self) -> None:
        """:meth:`terminate`, then wait for the child within its grace (killed after that)."""
        self.terminate()
        process = self._process
        if process is not None:
            try:
                process.wait(self._grace_seconds + 5)
            except subprocess.TimeoutExpired:
                event(log, "node.child.killed", logging.WARNING, child=self.name, pid=process.pid)
                process.kill()
                process.wait(10)
        self._thread.join(5)
