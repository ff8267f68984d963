"""Who may talk to the node: TLS with client certificates, source addresses, association limits."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Instance
from listener.server import make_ssl_context
from ops.dcmtk import dcmtk
from tests.conftest import require_tools
from tests.dcmtk import DCMTK_ENV, echoscu, storescu
from workers.requestor import associate

pytestmark = pytest.mark.dcmtk


def _tls_store(port: int, files: list[Path], key: Path | None, cert: Path | None, ca: Path) -> subprocess.CompletedProcess[str]:
    tls = ["+tls", str(key), str(cert)] if key and cert else ["+tla"]
    return subprocess.run([dcmtk("storescu"), "-to", "10", "-aec", "TRIAGE", *tls, "-pw", "+cf", str(ca), "127.0.0.1",
                           str(port), *map(str, files)], capture_output=True, text=True, timeout=60, env=DCMTK_ENV)


def test_tls_with_a_client_certificate_and_refusals_without(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], pki: dict[str, Path], ct_files: list[Path],
) -> None:
    require_tools("storescu")
    context = make_ssl_context(pki["server_pem"], pki["server_key"], pki["ca_pem"], require_client_cert=True)
    listener = listener_factory(sessions, ssl_context=context)
    ok = _tls_store(listener.port, ct_files[:2], pki["client_key"], pki["client_pem"], pki["ca_pem"])
    assert ok.returncode == 0, ok.stderr
    anonymous = _tls_store(listener.port, ct_files[2:3], None, None, pki["ca_pem"])
    assert anonymous.returncode != 0
    rogue = _tls_store(listener.port, ct_files[3:4], pki["rogue_key"], pki["rogue_pem"], pki["ca_pem"])
    assert rogue.returncode != 0
    plain = storescu(listener.port, ct_files[4:5])  # no TLS at all on a TLS port
    assert plain.returncode != 0
    with sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == 2


def test_source_address_allow_list(sessions: sessionmaker[Session], listener_factory: Callable[..., Any]) -> None:
    require_tools("echoscu")
    elsewhere = listener_factory(sessions, allowed_hosts=["10.0.0.0/8"])
    assert echoscu(elsewhere.port).returncode != 0
    here = listener_factory(sessions, allowed_hosts=["192.168.0.0/16", "127.0.0.1"])
    assert echoscu(here.port).returncode == 0


def test_associations_beyond_the_limit_are_refused_without_harming_the_others(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], ct_files: list[Path],
) -> None:
    require_tools("echoscu", "storescu")
    listener = listener_factory(sessions, max_associations=2)
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    held = [associate(ae, "127.0.0.1", listener.port, ae_title="TRIAGE") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        flood = [echoscu(listener.port) for _ in range(5)]
        assert all(r.returncode != 0 for r in flood)
        assert all("Association Rejected" in r.stderr for r in flood)
        # the two in flight still work
        assert all(int(a.send_c_echo().Status) == 0 for a in held)
    finally:
        for a in held:
            a.release()
    time.sleep(0.5)
    result = storescu(listener.port, ct_files[:1])
    assert result.returncode == 0, result.stderr
