"""The node's own processes started as an operator would (``triage serve`` / ``listen`` / ``worker``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db.session import make_engine, make_sessionmaker
from tests.services import free_port, port_open


class NodeProcess:
    """One ``python -m ops.cli COMMAND`` process with its own TRIAGE_* environment and log file."""

    def __init__(self, command: str, workdir: Path, env: dict[str, str], name: str | None = None) -> None:
        self.command = command
        self.log_path = workdir / f"{name or command}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
        if "TRIAGE_SHARED_DATA" in os.environ:
            base["TRIAGE_SHARED_DATA"] = os.environ["TRIAGE_SHARED_DATA"]
        self.env = {**base, **env}
        self._log = open(self.log_path, "a")
        self.process = subprocess.Popen([sys.executable, "-m", "ops.cli", command], env=self.env, cwd=workdir,
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_port(self, port: int, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while not port_open(port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.command} did not start: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    def kill_group(self) -> None:
        """SIGKILL the process and all its children (a crash, not a shutdown)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(30)

    def stop(self, timeout: float = 90) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_group()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # stragglers of the group (pool children)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text()

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log records of event ``name`` (needs ``TRIAGE_LOG_FORMAT=json``, as node_env sets)."""
        records = (json.loads(line) for line in self.log().splitlines() if line.startswith("{"))
        return [record for record in records if record.get("event") == name]


def node_env(workdir: Path, *, port: int | None = None, broker_url: str | None = None,
             destinations: str = "", quiet: float = 2.0, **extra: str) -> dict[str, str]:
    env = {
        "TRIAGE_DATA_DIR": str(workdir / "node"),
        "TRIAGE_PORT": str(port or free_port()),
        "TRIAGE_QUIET_SECONDS": str(quiet),
        "TRIAGE_DESTINATIONS": destinations,
        "TRIAGE_EXPORT_RETRY_BASE_SECONDS": "1",
        "TRIAGE_EXPORT_RETRY_MAX_SECONDS": "2",
        "TRIAGE_LOG_FORMAT": "json",
    }
    if broker_url:
        env["TRIAGE_BROKER_URL"] = broker_url
    env.update(extra)
    return env


def node_sessions(env: dict[str, str]) -> sessionmaker[Session]:
    url = env.get("TRIAGE_DATABASE_URL") or f"sqlite:///{Path(env['TRIAGE_DATA_DIR']) / 'triage.db'}"
    return make_sessionmaker(make_engine(url))


def wait_for(predicate: Callable[[], object], seconds: float, what: str, logs: Callable[[], str] | None = None) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    detail = f"\n--- logs ---\n{logs()[-4000:]}" if logs else ""
    raise AssertionError(f"timed out after {seconds} s waiting for {what}{detail}")
