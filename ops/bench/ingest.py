"""``triage bench ingest``: C-STORE throughput of the listener beside dcmtk's storescp.

Every receiver gets the same N instances from the same dcmtk ``storescu`` on loopback, one after the
other in each round, in the opposite order the next round, so that disk cache and CPU frequency treat
them alike. The host's speed drifts: storescp alone went from 246 to 698 instances/s within one run on
the development VM. So each receiver's ratio is taken to the storescp run of its own round, and the
table gives the median of those ratios and their range. The listener keeps its durability rule (fsync of
file and directory, committed row before Success); storescp writes its files without fsync, so the
ratio is the price of never losing an acknowledged image. A second storescp fsyncs each file and its
folder before it answers (``fsync_on_close.c`` preloaded): the same rule in dcmtk's own C code, so what
the disk charges for durability shows apart from what the listener's own code costs. Another listener
runs with fsync and fdatasync made no-ops (Debian's eatmydata, preloaded): not durable, it is there to
show how much of the listener's time per instance is those flushes and how much is everything else.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ops.bench.fsync_shim import build_fsync_shim
from ops.bench.host import describe_host
from ops.bench.net import DCMTK_ENV, DEFAULT_SHARED, free_port, wait_port
from ops.bench.series import build_ct_series
from ops.dcmtk import dcmtk, find_dcmtk

TRANSPORT = "listener's transport storing nothing"
DURABLE_SCP = "storescp, fsync file + folder"
NO_FLUSH = "listener, no fsync (not durable)"
STOCK = "stock pynetdicom storing nothing"
T = TypeVar("T")
#: storescu runs of one instance each, per receiver and round, for the per-association line
ASSOCIATION_RUNS = 40


def _send(port: int, called: str, files: list[Path], senders: int = 1, required_only: bool = True) -> float:
    """Seconds for ``senders`` storescu processes at once (one association each) to send ``files``;
    ``required_only``: propose only the contexts the files need (``-R``), not storescu's default of every
    storage SOP class."""
    chunks = [files[i::senders] for i in range(senders)]
    started = time.perf_counter()
    running = [subprocess.Popen(
        [dcmtk("storescu"), "-aet", "BENCH", "-aec", called, *(["-R"] if required_only else []), "127.0.0.1",
         str(port), *map(str, chunk)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=DCMTK_ENV,
    ) for chunk in chunks if chunk]
    failures = []
    for sender in running:
        _, stderr = sender.communicate(timeout=3600)
        if sender.returncode != 0:
            failures.append(f"({sender.returncode}): {stderr[-500:]}")
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"storescu to {called} failed {failures[0]}")
    return elapsed


def _ratios(reference: list[float], own: list[float]) -> list[float]:
    """Round by round, how much faster ``own`` was than ``reference`` (times or ms of the same work):
    ratios within a round, so that the host's drift between rounds cancels out."""
    return [theirs / mine for theirs, mine in zip(reference, own, strict=True)]


def _in_turn(items: list[T], round_: int) -> list[T]:
    """The receivers in this round's order: as given, reversed every other round, so that whatever the
    host does to the first or the last of a round treats them alike."""
    return items if round_ % 2 == 0 else items[::-1]


def _per_association_ms(port: int, called: str, files: list[Path]) -> float:
    """Milliseconds per storescu run of one file each: association set-up, one C-STORE, release, and the
    storescu process's own start, which every receiver pays alike (modalities often send one image per
    association, and PACS one series). storescu proposes its default, every storage SOP class (about 120
    presentation contexts), as senders that do not know in advance what they will send do."""
    started = time.perf_counter()
    for path in files:
        _send(port, called, [path], required_only=False)
    return (time.perf_counter() - started) * 1000 / len(files)


def _one_per_association(sources: list[Path], folder: Path, runs: int,
                         receivers: dict[str, tuple[int, str]]) -> dict[str, list[float]]:
    """Milliseconds per one-instance association of each receiver (name: port, called AE title), two
    rounds in alternating order, each round with instances of new UIDs."""
    timings: dict[str, list[float]] = {name: [] for name in receivers}
    for round_ in range(2):
        files = build_ct_series(sources, folder / f"round{round_}", runs)
        for name in _in_turn(list(receivers), round_):
            timings[name].append(_per_association_ms(*receivers[name], files))
    return timings


def _stat_fields(pid: int | str) -> list[str]:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process and its children, live or reaped (Linux /proc), or None elsewhere.

    Children count: storescp --fork serves each association in one, and the listener's extra
    processes (TRIAGE_LISTENER_PROCESSES) are its children.
    """
    try:
        ticks = sum(int(value) for value in _stat_fields(pid)[11:15])  # utime stime cutime cstime
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = _stat_fields(entry)
                except OSError:
                    continue  # ended meanwhile: counted in cutime once reaped
                if fields[1] == str(pid):
                    ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class DurabilityFloor:
    """What never losing an acknowledged instance costs per instance on this disk, beyond a plain write."""

    plain_write_ms: float  # a new file written through the page cache, not fsynced (storescp's way)
    durable_write_ms: float  # a new file written and fsynced as the listener writes it (O_DIRECT where taken)
    fsync_ms: float  # of that, the fsync alone: it can only start once the last byte is in
    place_ms: float  # rename into place + fsync of its folder
    commit_ms: float  # one row committed to SQLite in WAL mode with synchronous=FULL
    direct_io: bool  # whether the durable writes went around the page cache (O_DIRECT) on this disk

    @property
    def extra_ms(self) -> float:
        """Per instance, what no receiver can overlap with the transfer, one step after the other: the data
        can be written while it arrives (the listener does), but the fsync waits for its last byte, the
        rename for the fsync, and the answer for all three and the commit."""
        return self.fsync_ms + self.place_ms + self.commit_ms

    @property
    def overlapped_ms(self) -> float:
        """The same with the commit run beside the file's fsync, rename and folder fsync, as the listener
        runs it (``listener.server``): the answer waits for the longer of the two."""
        return max(self.fsync_ms + self.place_ms, self.commit_ms)


def durability_floor(sample: bytes, folder: Path, count: int = 100) -> DurabilityFloor:
    """Time the durable steps alone, with the instance bytes the benchmark sends, on its disk.

    Per instance, each step timed on its own (the listener runs the commit beside the other three): write
    a new file, fsync it, rename it into place and fsync the folder, commit one row to SQLite (WAL,
    synchronous=FULL). Interleaved, because an fsync's price depends on what the file system's journal
    must commit with it (a commit right after a rename costs several times one in a quiet loop). The
    plain writes (storescp's way) are timed in a loop of their own first. Medians over ``count`` instances.
    """
    import sqlite3

    from listener.storage import InstanceStore, TempFile

    store = InstanceStore(folder / "store")
    plain, synced, fsynced, placed, committed = [], [], [], [], []
    for i in range(count):
        started = time.perf_counter()
        with open(folder / f"plain{i}", "xb") as fh:
            fh.write(sample)
        plain.append(time.perf_counter() - started)
    os.sync()
    with sqlite3.connect(folder / "floor.db", isolation_level=None) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE rows (uid TEXT PRIMARY KEY, path TEXT, bytes INTEGER)")
        for i in range(count):
            started = time.perf_counter()
            tmp = TempFile(store)
            tmp.open()
            tmp.write(*tmp.stage(sample), *tmp.stage_end())
            written = time.perf_counter()
            tmp.finish()
            synced.append(time.perf_counter() - started)
            fsynced.append(time.perf_counter() - written)
            started = time.perf_counter()
            store.place(tmp.path, Path("study") / "series" / f"{i}.dcm")
            placed.append(time.perf_counter() - started)
            started = time.perf_counter()
            db.execute("BEGIN")
            db.execute("INSERT INTO rows VALUES (?, ?, ?)", (f"1.2.3.{i}", f"study/series/{i}.dcm", len(sample)))
            db.execute("COMMIT")
            committed.append(time.perf_counter() - started)
    median = statistics.median
    return DurabilityFloor(plain_write_ms=median(plain) * 1000, durable_write_ms=median(synced) * 1000,
                           fsync_ms=median(fsynced) * 1000, place_ms=median(placed) * 1000,
                           commit_ms=median(committed) * 1000, direct_io=store.direct_io)


#: Making a new file took 11-27 us here on a settled disk and 0.8-1 ms after a large deletion; above this,
#: the file system's search for a free inode shows in every receiver's figures (``_settled_file_creation``).
SLOW_CREATE_US = 100.0


def _file_creation_us(folder: Path, count: int = 20) -> float:
    """Median microseconds to make a new empty file in ``folder`` (the files stay, for the caller's clean-up:
    removing them would add to what is measured)."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        os.close(os.open(folder / f".probe-{uuid.uuid4().hex}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def _settled_file_creation(folders: dict[str, Path], wait_s: float = 120.0, every_s: float = 10.0) -> str:
    """Wait (up to ``wait_s``) until making a file in each receiver's folder is quick again; what it found.

    ext4 without a journal (the root file system of the development VM: /proc/fs/jbd2 is empty) passes
    over each recently deleted inode when it makes a file. 5000 files deleted from a folder, a new file
    beside them took 1.04 ms 2 s later, 0.94 ms at 10 s, 0.79 ms at 30 s and 0.05 ms at 61 s, against
    11-27 us on a settled disk; perf put a quarter of the listener's CPU in that search
    (``find_inode_bit``, ``recently_deleted``) in runs after such deletions. Each receiver pays it on every
    instance, more or less depending on where its folder lies, and on a 2-core machine that CPU is taken
    from the sender. The previous run's clean-up of its work folder is such a deletion. The kernel's rule
    (``recently_deleted`` in fs/ext4/ialloc.c): an inode freed less than 60 s ago is passed over, or less
    than 300 s ago while its inode table block is not yet written back; in some folders a new file still
    took 0.23-0.42 ms two and a half minutes after a deletion, so a run that waited its full time says so.
    """
    started = time.monotonic()
    while True:
        found = {name: _file_creation_us(folder) for name, folder in folders.items()}
        waited = time.monotonic() - started
        if max(found.values()) <= SLOW_CREATE_US or waited + every_s > wait_s:
            break
        time.sleep(every_s)
    where = ", ".join(f"{us:.0f} us in {name}" for name, us in found.items())
    line = f"a new file before the first round: {where} (median of 20)"
    if waited >= 1:
        line += f", after waiting {waited:.0f} s for the file system to settle after recent deletions"
    if max(found.values()) > SLOW_CREATE_US:
        line += (f"; above {SLOW_CREATE_US:.0f} us the file system, passing over recently deleted inodes, is "
                 "what sets the pace: rerun in a few minutes")
    return line


def _listener(env: dict[str, str], wrapper: str | None = None) -> subprocess.Popen[bytes]:
    """``triage listen`` in its own process with ``env`` (its data folder and port), started through
    ``wrapper`` when given (a command that runs the rest of its arguments, as eatmydata does)."""
    command = [sys.executable, "-m", "ops.cli", "listen"]
    return subprocess.Popen([wrapper, *command] if wrapper else command, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stored_rows(database: Path) -> int:
    import sqlite3

    with sqlite3.connect(database) as conn:
        return int(conn.execute("SELECT count(*) FROM instances").fetchone()[0])


def run_ingest_benchmark(count: int = 500, shared_data: str | None = None, keep: bool = False,
                         rounds: int = 4, senders: int = 1, settle_s: float = 120.0) -> int:
    for tool in ("storescu", "storescp"):
        if find_dcmtk(tool) is None:
            print(f"triage bench ingest: dcmtk's {tool} not found: apt-get install dcmtk", file=sys.stderr)
            return 2
    data = Path(shared_data) if shared_data else Path(os.environ.get("TRIAGE_SHARED_DATA", DEFAULT_SHARED))
    sources = sorted((data / "dicom" / "ct-covid19-ny-sbu").rglob("axial/*.dcm"))
    sources = [p for p in sources if p.stat().st_size < 600_000]  # the 512x512 16-bit slices
    if not sources:
        print(f"triage bench ingest: no NY-SBU axial slices under {data}: pass --data", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="triage-bench-ingest-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        print(f"building {count} CT instances from {len(sources)} real NY-SBU slices ...", flush=True)
        files = build_ct_series(sources, work / "study", count)
        megabytes = sum(p.stat().st_size for p in files) / 1e6

        scp_port, node_port, fast_port = free_port(), free_port(), free_port()
        null_port, stock_port = free_port(), free_port()
        scp_dir = work / "storescp"
        scp_dir.mkdir()
        # one association at a time by default; --fork serves several senders at once, as the listener does
        storescp = [dcmtk("storescp"), *(["--fork"] if senders > 1 else []), "-aet", "STORESCP"]
        processes.append(subprocess.Popen([*storescp, "-od", str(scp_dir), str(scp_port)],
                                          env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # the same storescp with each file and its folder fsynced before it answers (the listener's rule)
        shim, no_shim = build_fsync_shim(work)
        durable_receivers = []
        if shim is not None:
            durable_port, durable_dir = free_port(), work / "storescp-durable"
            durable_dir.mkdir()
            processes.append(subprocess.Popen([*storescp, "-od", str(durable_dir), str(durable_port)],
                                              env={**DCMTK_ENV, "LD_PRELOAD": str(shim)},
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            durable_receivers.append((DURABLE_SCP, durable_port, "STORESCP"))
        node_env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
        node_env.update({"TRIAGE_DATA_DIR": str(work / "node"), "TRIAGE_PORT": str(node_port),
                         "TRIAGE_QUIET_SECONDS": "3600", "TRIAGE_COMPLETION_CEILING_SECONDS": "3600",
                         "TRIAGE_LOG_LEVEL": "WARNING"})
        processes.append(_listener(node_env))
        receivers = [("storescp", scp_port, "STORESCP"), *durable_receivers, ("listener", node_port, "TRIAGE")]
        if senders > 1:  # one listener process per core (TRIAGE_LISTENER_PROCESSES) beside the default one
            cores = min(senders, os.cpu_count() or 1)
            multi_port = free_port()
            multi_env = {**node_env, "TRIAGE_DATA_DIR": str(work / "node-multi"), "TRIAGE_PORT": str(multi_port),
                         "TRIAGE_LISTENER_PROCESSES": str(cores)}
            processes.append(_listener(multi_env))
            receivers.append((f"listener, {cores} processes", multi_port, "TRIAGE"))
        # the same listener with SQLite commits not fsynced (files still are): the price of FULL
        fast_env = {**node_env, "TRIAGE_DATA_DIR": str(work / "node-normal"), "TRIAGE_PORT": str(fast_port),
                    "TRIAGE_DURABLE_COMMIT": "false"}
        processes.append(_listener(fast_env))
        # the same listener with fsync and fdatasync doing nothing (Debian's eatmydata): not durable, run
        # only to show what of its time is the disk's flushes and what is everything else
        eatmydata, no_flush_receivers = shutil.which("eatmydata"), []
        if eatmydata is not None:
            no_flush_port = free_port()
            no_flush_env = {**node_env, "TRIAGE_DATA_DIR": str(work / "node-no-flush"),
                            "TRIAGE_PORT": str(no_flush_port)}
            processes.append(_listener(no_flush_env, wrapper=eatmydata))
            no_flush_receivers.append((NO_FLUSH, no_flush_port, "TRIAGE"))
        # pynetdicom receiving and answering, storing nothing: the listener's transport (event-driven
        # reactor) and pynetdicom's stock polling one, side by side
        for port, extra in ((null_port, []), (stock_port, ["--stock"])):
            processes.append(subprocess.Popen([sys.executable, "-m", "ops.bench.null_scp", str(port), *extra],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        receivers += [("listener, sqlite synchronous=NORMAL", fast_port, "TRIAGE"), *no_flush_receivers,
                      (TRANSPORT, null_port, "NULLSCP"), (STOCK, stock_port, "NULLSCP")]
        for _, port, _ in receivers:
            wait_port(port)
        pids = dict(zip((name for name, _, _ in receivers), (p.pid for p in processes), strict=True))
        timings: dict[str, list[float]] = {name: [] for name, _, _ in receivers}
        cpu_ms: dict[str, list[float]] = {name: [] for name, _, _ in receivers}
        creation = _settled_file_creation({"storescp's folder": scp_dir,
                                           "the listener's": work / "node" / "storage" / "tmp"}, settle_s)
        for round_ in range(rounds):
            if round_ > 0:  # new UIDs each round, so nothing is a duplicate; the same files for every receiver
                files = build_ct_series(sources, work / f"study{round_}", count)
            for name, port, called in _in_turn(receivers, round_):
                cpu_before = _cpu_seconds(pids[name])
                timings[name].append(_send(port, called, files, senders))
                cpu_after = _cpu_seconds(pids[name])
                if cpu_before is not None and cpu_after is not None:
                    cpu_ms[name].append((cpu_after - cpu_before) * 1000 / count)
                print(f"  round {round_ + 1} {name:36} {timings[name][-1]:7.2f} s", flush=True)
        stored = _stored_rows(work / "node" / "triage.db")
        if senders > 1:
            stored = min(stored, _stored_rows(work / "node-multi" / "triage.db"))
        expected = count * rounds
        runs = min(count, ASSOCIATION_RUNS)
        per_association = _one_per_association(  # after the rows were counted: these instances are extra
            sources, work / "one-per-association", runs,
            {"storescp": (scp_port, "STORESCP"), "listener": (node_port, "TRIAGE")}) if senders == 1 else {}
        rows = []
        for name, values in timings.items():
            median = statistics.median(values)
            cpu = statistics.median(cpu_ms[name]) if cpu_ms[name] else float("nan")
            # this receiver's speed over storescp's in the same round: the host's drift cancels out
            ratios = _ratios(timings["storescp"], values)
            rows.append((name, count, median, count / median, megabytes / median, statistics.median(ratios),
                         min(ratios), max(ratios), cpu))
        rate = {name: ips for name, _, _, ips, *_ in rows}
        ratio = {name: r for name, _, _, _, _, r, *_ in rows}
        print()
        how = "one storescu" if senders == 1 else f"{senders} storescu at once (one association each)"
        print(f"C-STORE of {count} CT instances (512x512, 16-bit, {megabytes / count:.2f} MB each), "
              f"{how} -> loopback, median of {rounds} rounds")
        print(describe_host(work))
        print(f"{'receiver':36} {'instances':>9} {'seconds':>8} {'inst/s':>8} {'MB/s':>8} {'ratio':>6} "
              f"{'range':>11} {'CPU ms/inst':>11}")
        for name, n, seconds, ips, mbps, mid, low, high, cpu in rows:
            print(f"{name:36} {n:9d} {seconds:8.2f} {ips:8.1f} {mbps:8.1f} {mid:5.2f}x {low:5.2f}-{high:4.2f}x "
                  f"{cpu:11.2f}")
        print("ratio = inst/s over storescp's in the same round, median over the rounds, and its range (target "
              ">= 0.80x). The listener fsyncs file and directory and, meanwhile, "
              "commits the row (SQLite synchronous=FULL by default) before each Success; storescp fsyncs nothing. "
              "The last two rows receive and answer and store nothing: the listener's event-driven transport "
              "(listener/reactor.py) and pynetdicom's stock polling reactor. 'storescp, fsync file + folder' is "
              "storescp with ops/bench/fsync_on_close.c preloaded: the listener's durability in dcmtk's C code. "
              "CPU ms/inst = user + system CPU of the receiving process (and its children) per instance: with one "
              "sender the listener waits on the disk, with many at once its CPU (one core per process: Python's "
              "GIL) is what bounds it.")
        ceiling = rate[TRANSPORT]
        print(f"the listener reaches {rate['listener'] / ceiling:.2f} of its own transport's ceiling, which is "
              f"{ratio[TRANSPORT]:.2f}x storescp ({ceiling / rate[STOCK]:.2f}x stock pynetdicom)")
        if DURABLE_SCP in timings:
            # per round, as the ratios above: the listener over storescp under the same rule
            to_durable = statistics.median(_ratios(timings[DURABLE_SCP], timings["listener"]))
            print(f"under the listener's durability rule (each file and its folder fsynced before Success; no "
                  f"database), dcmtk's own storescp reaches {ratio[DURABLE_SCP]:.2f}x of itself on this machine, and "
                  f"the listener {to_durable:.2f}x of that storescp")
        else:
            print(f"({DURABLE_SCP} not run: {no_shim})")
        if NO_FLUSH in timings:
            # per round: what the listener's flushes add to each instance, and its cycle without them
            flush_ms = [(durable - skipped) * 1000 / count
                        for durable, skipped in zip(timings["listener"], timings[NO_FLUSH], strict=True)]
            print(f"without its flushes (fsync and fdatasync made no-ops by eatmydata: not durable, for comparison "
                  f"only) the listener reaches {ratio[NO_FLUSH]:.2f}x storescp, {1000 / rate[NO_FLUSH]:.2f} ms per "
                  f"instance against storescp's {1000 / rate['storescp']:.2f} ms: the flushes of its durability "
                  f"rule add {statistics.median(flush_ms):.2f} ms per instance on this disk (median of the rounds; "
                  f"{min(flush_ms):.2f} to {max(flush_ms):.2f})")
        else:
            print(f"({NO_FLUSH} not run: eatmydata not found: apt-get install eatmydata)")
        if per_association:
            scp_ms, node_ms = (statistics.median(per_association[name]) for name in ("storescp", "listener"))
            to_scp = statistics.median(_ratios(per_association["storescp"], per_association["listener"]))
            print(f"one instance per association ({runs} storescu runs each, every storage SOP class "
                  f"proposed, 2 rounds, the sender's process start included): storescp {scp_ms:.1f} ms, listener "
                  f"{node_ms:.1f} ms per association ({to_scp:.2f}x)")
        if senders == 1:  # one association: each instance waits for its own fsyncs before the next is sent
            floor = durability_floor(files[0].read_bytes(), work / "floor")
            per_instance_ms = 1000 / rate["storescp"]
            best = per_instance_ms / (per_instance_ms + floor.overlapped_ms)
            how = "O_DIRECT" if floor.direct_io else "page cache"
            print(f"durability on this disk, per instance: the file written and fsynced ({how}) "
                  f"{floor.durable_write_ms:.2f} ms against storescp's plain write {floor.plain_write_ms:.2f} ms; "
                  f"after its last byte: its fsync {floor.fsync_ms:.2f} ms, rename + directory "
                  f"fsync {floor.place_ms:.2f} ms, SQLite commit (WAL, FULL) {floor.commit_ms:.2f} ms, "
                  f"{floor.extra_ms:.2f} ms one after the other, {floor.overlapped_ms:.2f} ms with the commit beside "
                  f"the file's steps (the listener's order). storescp takes {per_instance_ms:.2f} ms per instance: "
                  f"with that added to its cycle in full, {best:.2f}x on one association. That is no ceiling: storescp "
                  f"(dcmtk's default) writes its file only once the data set is in, after its last byte too, and a "
                  f"receiver that writes while the data arrives has that part of the time for them")
        else:  # several associations: the fsyncs overlap, and CPU becomes the bound
            listener_cpu = statistics.median(cpu_ms["listener"]) if cpu_ms["listener"] else float("nan")
            print(f"at {listener_cpu:.2f} ms of CPU per instance a listener process receives at most "
                  f"{1000 / listener_cpu:.0f} inst/s on its one core; this machine has {os.cpu_count()} cores, "
                  f"shared here with the {senders} senders")
        print(creation)
        print(f"listener rows recorded: {stored} of {expected}" + (" (each listener)" if senders > 1 else ""))
        return 0 if stored == expected else 1
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
