"""The ingest benchmark's durable storescp: the preloaded shim fsyncs every file storescp receives."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ops.bench.fsync_shim import build_fsync_shim
from ops.bench.net import DCMTK_ENV, free_port, wait_port
from ops.dcmtk import dcmtk
from tests.conftest import require_tools


def test_storescp_with_the_shim_makes_each_received_file_durable_before_it_answers(
    tmp_path: Path, ct_files: list[Path],
) -> None:
    require_tools("storescu", "storescp")
    shim, why = build_fsync_shim(tmp_path)
    if shim is None:
        pytest.skip(why)
    received, log = tmp_path / "received", tmp_path / "durable.log"
    received.mkdir()
    port = free_port()
    scp = subprocess.Popen([dcmtk("storescp"), "-aet", "STORESCP", "-od", str(received), str(port)],
                           env={**DCMTK_ENV, "LD_PRELOAD": str(shim), "FSYNC_ON_CLOSE_LOG": str(log)},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # nothing reads a pipe
    try:
        wait_port(port)
        sent = ct_files[:2]
        subprocess.run([dcmtk("storescu"), "-aet", "BENCH", "-aec", "STORESCP", "127.0.0.1", str(port),
                        *map(str, sent)], env=DCMTK_ENV, check=True, capture_output=True, timeout=60)
    finally:
        scp.terminate()
        scp.wait(10)
    stored = sorted(received.iterdir())
    assert len(stored) == len(sent)
    # each line is written after the file and its folder were fsynced, before storescp answered
    assert sorted(Path(line) for line in log.read_text().splitlines()) == [path.resolve() for path in stored]
