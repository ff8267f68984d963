"""Shared fixtures: real data, real databases (SQLite and PostgreSQL), a real listener on loopback."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import upgrade
from db.session import make_engine, make_sessionmaker
from listener.storage import InstanceStore
from ops.dcmtk import find_dcmtk
from tests.services import ensure_postgres

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("TRIAGE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "dicom").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set TRIAGE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ct_files(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "dicom" / "ct-covid19-ny-sbu").rglob("*.dcm"))


@pytest.fixture(scope="session")
def axial_ct_files(ct_files: list[Path]) -> list[Path]:
    return [p for p in ct_files if p.parent.name == "axial"]


@pytest.fixture(scope="session")
def original_axial_ct_files(axial_ct_files: list[Path]) -> list[Path]:
    """The ORIGINAL/PRIMARY axial slices (one NY-SBU "axial" file is a derived thick reformat)."""
    import pydicom

    return [p for p in axial_ct_files if "ORIGINAL" in pydicom.dcmread(p, stop_before_pixels=True).ImageType]


@pytest.fixture(scope="session")
def cr_file(shared_data: Path) -> Path:
    return shared_data / "dicom" / "cr-chest" / "RG1_UNCR.dcm"


def require_tools(*names: str) -> None:
    # find_dcmtk, not shutil.which: pynetdicom's console scripts of the same names may come first on PATH
    missing = [name for name in names if find_dcmtk(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install dcmtk dicom3tools orthanc)")


def wait_until(condition: Callable[[], object], seconds: float = 10.0) -> bool:
    """Poll ``condition`` every 20 ms until it holds or ``seconds`` pass; whether it held."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def tmp_folder_empties(store: InstanceStore) -> bool:
    """Whether the listener's temporary folder is (soon) empty: each association keeps the file of its
    next C-STORE there until it closes, which happens just after the sender has its answer."""
    return wait_until(lambda: not any(store.tmp_dir.iterdir()))


@pytest.fixture
def pwritev_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of buffers of each vectored write from now on."""
    calls: list[int] = []
    real_pwritev = os.pwritev

    def counting_pwritev(fd: int, buffers: list[memoryview], offset: int) -> int:
        calls.append(len(buffers))
        return real_pwritev(fd, buffers, offset)

    monkeypatch.setattr(os, "pwritev", counting_pwritev)
    return calls


@pytest.fixture(scope="session")
def postgres_server() -> str:
    try:
        return ensure_postgres()
    except Exception as exc:  # pragma: no cover - only on machines without PostgreSQL at all
        pytest.fail(f"PostgreSQL could not be started on loopback: {exc}")


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"triage_test_{uuid.uuid4().hex[:12]}"
    admin = make_engine(postgres_server, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'triage.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def listener_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """Start in-process listeners on free loopback ports; all are stopped after the test.

    pynetdicom's debug-dump handlers are off, as ``ops.logs.configure`` leaves them in every node
    process: the listener then answers with its packed C-STORE responses, as the node does.
    """
    from pynetdicom import _config as pynetdicom_config

    from listener.server import Listener

    monkeypatch.setattr(pynetdicom_config, "LOG_HANDLER_LEVEL", "none")

    started: list[Listener] = []

    def start(sessions: sessionmaker[Session], **options: Any) -> Listener:
        options.setdefault("ae_title", "TRIAGE")
        listener = Listener(store=InstanceStore(tmp_path / "storage"), sessions=sessions, host="127.0.0.1",
                            port=0, **options)
        listener.start()
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.stop(grace_seconds=5)


@pytest.fixture
def scenario_report() -> Callable[..., None]:
    """Record a fault or bad-input scenario's counts for ``triage bench reliability``.

    Tests assert on the counts themselves; when RELIABILITY_REPORT names a file (the benchmark sets
    it), each row is also appended there as one JSON line, and the benchmark prints the table.
    """
    import json

    def record(scenario: str, *, sent: int, acknowledged: int, stored: int, analysed: int | None = None,
               lost: int, duplicated: int, note: str = "") -> None:
        assert lost == 0, f"{scenario}: {lost} acknowledged instance(s) lost"
        assert duplicated == 0, f"{scenario}: {duplicated} duplicate(s)"
        target = os.environ.get("RELIABILITY_REPORT")
        if target:
            row = {"scenario": scenario, "sent": sent, "acknowledged": acknowledged, "stored": stored,
                   "analysed": analysed, "lost": lost, "duplicated": duplicated, "note": note}
            with open(target, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    return record


def full_size(small: int, full: int) -> int:
    """Test size in CI, benchmark size under ``triage bench reliability`` (RELIABILITY_FULL=1)."""
    return full if os.environ.get("RELIABILITY_FULL") == "1" else small


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1, a client signed by it and a rogue client."""
    require_tools("openssl")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=rogue",
             "-keyout", "rogue.key", "-out", "rogue.pem", cwd=d)
    return {p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()}
