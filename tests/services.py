"""Real PostgreSQL and Redis on loopback for the tests: use the running ones, start them if absent.

A developer's machine has both on their standard ports; a fresh machine may have them installed but
stopped, or only installed as binaries. Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ops.bench.net import free_port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _wait_port(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if port_open(port):
            return True
        time.sleep(0.2)
    return False


def ensure_postgres() -> str:
    """Return a libpq URL of a PostgreSQL server on loopback, starting one if needed."""
    if port_open(5432):
        return "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    if shutil.which("pg_ctlcluster") and glob.glob("/etc/postgresql/*/main"):
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=False,
                       capture_output=True, timeout=60)
        if _wait_port(5432, 30):
            return "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    bindir = _pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
    port = free_port()
    datadir = Path(tempfile.mkdtemp(prefix="triage-pg-"))
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if run_as:
        shutil.chown(datadir, "postgres")
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(datadir / "log"), "-o",
                    f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1", "start", "-w"],
                   check=True, capture_output=True, timeout=120)
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"


def _pg_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def ensure_redis() -> str:
    """Return the URL of a Redis server on loopback, starting one if needed."""
    if port_open(6379):
        return "redis://127.0.0.1:6379/0"
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("Redis is not installed: apt-get install redis-server")
    subprocess.run([server, "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379", "--save", "",
                    "--appendonly", "no"], check=True, capture_output=True, timeout=30)
    if not _wait_port(6379, 30):
        raise RuntimeError("redis-server did not start on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"
