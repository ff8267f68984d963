"""``triage bench ingest`` runs end to end and prints what the issue asks for (a smoke run with a
dozen instances: the figures themselves are only meaningful from a full run on an idle machine)."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from ops.bench import ingest
from ops.bench.fsync_shim import c_compiler
from ops.bench.ingest import run_ingest_benchmark
from tests.conftest import require_tools


def test_ingest_benchmark_prints_every_receiver_the_ratios_and_the_durability_bound(
    capsys: pytest.CaptureFixture[str], shared_data: Path,
) -> None:
    require_tools("storescu", "storescp")
    assert run_ingest_benchmark(count=12, shared_data=str(shared_data), rounds=1, settle_s=0) == 0
    out = capsys.readouterr().out
    for receiver in ("storescp", "listener", "listener, sqlite synchronous=NORMAL",
                     "listener's transport storing nothing", "stock pynetdicom storing nothing"):
        assert re.search(rf"^{re.escape(receiver)} +12 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+x +[\d.]+-[\d.]+x +[\d.]+$",
                         out, re.M), receiver
    assert re.search(r"^storescp .* 1\.00x +1\.00-1\.00x +[\d.]+$", out, re.M)
    # the host beside the table: the ratios depend on it (CPU, cores, kernel, the file system written to)
    host = re.search(rf"^host: .+, {os.cpu_count()} cores, \S+ \S+; /\S+ on (.+)$", out, re.M)
    assert host is not None, out
    if shutil.which("findmnt") is not None:  # util-linux, in Debian's base system
        assert re.fullmatch(r"\S+ \(\S+ at /\S*, \S+\)", host.group(1)), host.group(1)
    else:
        assert host.group(1).startswith("unknown file system (findmnt not found")
    if c_compiler() is not None:  # the shim is built where it runs
        assert re.search(r"^storescp, fsync file \+ folder +12 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+x +[\d.]+-[\d.]+x "
                         r"+[\d.]+$", out, re.M)
        assert re.search(r"dcmtk's own storescp reaches \d+\.\d\dx of itself on this machine, and the listener "
                         r"\d+\.\d\dx of that storescp", out)
    else:
        assert "(storescp, fsync file + folder not run: no C compiler" in out
    if shutil.which("eatmydata") is not None:  # Debian's eatmydata, installed by ops/test.sh
        assert re.search(r"^listener, no fsync \(not durable\) +12 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+x "
                         r"+[\d.]+-[\d.]+x +[\d.]+$", out, re.M)
        assert re.search(r"^without its flushes \(fsync and fdatasync made no-ops by eatmydata: not durable, for "
                         r"comparison only\) the listener reaches \d+\.\d\dx storescp, [\d.]+ ms per instance "
                         r"against storescp's [\d.]+ ms: the flushes of its durability rule add -?[\d.]+ ms per "
                         r"instance on this disk \(median of the rounds; -?[\d.]+ to -?[\d.]+\)$", out, re.M)
    else:
        assert "(listener, no fsync (not durable) not run: eatmydata not found" in out
    assert re.search(r"after its last byte: its fsync [\d.]+ ms, rename \+ directory fsync [\d.]+ ms, SQLite commit "
                     r"\(WAL, FULL\) [\d.]+ ms, [\d.]+ ms one after the other, [\d.]+ ms with the commit beside the "
                     r"file's steps \(the listener's order\)", out)
    assert re.search(r"with that added to its cycle in full, \d\.\d\dx on one association", out)
    assert re.search(r"^one instance per association \(12 storescu runs each, every storage SOP class proposed, 2 "
                     r"rounds, the sender's process start included\): storescp [\d.]+ ms, listener [\d.]+ ms per "
                     r"association \(\d+\.\d\dx\)$", out, re.M)
    assert re.search(r"^a new file before the first round: \d+ us in storescp's folder, \d+ us in the listener's "
                     r"\(median of 20\)", out, re.M)
    assert "listener rows recorded: 12 of 12" in out


def test_several_senders_add_the_multi_process_listener_and_the_cpu_bound(
    capsys: pytest.CaptureFixture[str], shared_data: Path,
) -> None:
    require_tools("storescu", "storescp")
    assert run_ingest_benchmark(count=12, shared_data=str(shared_data), rounds=1, senders=2, settle_s=0) == 0
    out = capsys.readouterr().out
    processes = min(2, os.cpu_count() or 1)
    assert "2 storescu at once (one association each)" in out
    assert re.search(rf"^listener, {processes} processes +12 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+x +[\d.]+-[\d.]+x +[\d.]+$",
                     out, re.M)
    assert re.search(r"ms of CPU per instance a listener process receives at most \d+ inst/s", out)
    assert "one instance per association" not in out  # measured with one sender only
    assert "listener rows recorded: 12 of 12" in out


def test_the_bench_waits_while_making_a_file_is_slow_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a threshold no file system meets, so that the wait is taken here on any disk
    monkeypatch.setattr(ingest, "SLOW_CREATE_US", 0.0)
    started = time.monotonic()
    line = ingest._settled_file_creation({"the folder": tmp_path}, wait_s=1.5, every_s=1.0)
    assert 1.0 <= time.monotonic() - started < 10
    assert re.match(r"a new file before the first round: \d+ us in the folder \(median of 20\), after waiting 1 s "
                    r"for the file system to settle after recent deletions; above 0 us the file system", line)
    assert len(list(tmp_path.iterdir())) == 40  # two looks of 20 files each, left for the caller's clean-up
