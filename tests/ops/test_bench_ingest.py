"""``triage bench ingest`` runs end to end and prints what the issue asks for (a smoke run with a
dozen instances: the figures themselves are only meaningful from a full run on an idle machine)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ops.bench.ingest import run_ingest_benchmark
from tests.conftest import require_tools


def test_ingest_benchmark_prints_every_receiver_the_ratios_and_the_durability_bound(
    capsys: pytest.CaptureFixture[str], shared_data: Path,
) -> None:
    require_tools("storescu", "storescp")
    assert run_ingest_benchmark(count=12, shared_data=str(shared_data), rounds=1) == 0
    out = capsys.readouterr().out
    for receiver in ("storescp", "listener", "listener, sqlite synchronous=NORMAL",
                     "listener's transport storing nothing", "stock pynetdicom storing nothing"):
        assert re.search(rf"^{re.escape(receiver)} +12 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+x$", out, re.M), receiver
    assert re.search(r"^storescp .* 1\.00x$", out, re.M)
    assert re.search(r"a receiver doing storescp's work plus these, in any language, reaches at most \d\.\d\dx", out)
    assert "listener rows recorded: 12 of 12" in out
