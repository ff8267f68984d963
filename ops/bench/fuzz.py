"""A mutation fuzzer over the path every received byte takes: parse, decode, preprocess.

Seeds are real files (NY-SBU CT slices, the CR, and re-encoded copies); each input is a seed's data
set with a few mutations (bit flips, byte runs, truncation, inserted or deleted chunks, rewritten
lengths near a tag). The file meta is left as it is: the network carries only the data set, and the
listener writes its own file meta in front of it. Every input goes through the listener's parser
(:func:`listener.server.read_instance_meta`) and, if accepted, is stored behind its seed's file meta
and goes through the engine's decoder and preprocessing, as a worker would. The only acceptable outcomes
are a result or one of the documented refusals; anything else is a finding. Each input runs under a
time limit, and the process's peak memory is reported.
"""

from __future__ import annotations

import logging
import random
import resource
import signal
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom


class _Timeout(Exception):
    pass


@dataclass
class FuzzReport:
    inputs: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    findings: list[tuple[str, str]] = field(default_factory=list)  # (mutation description, error)
    slowest_s: float = 0.0
    peak_rss_mb: float = 0.0
    seconds: float = 0.0


@dataclass(frozen=True)
class Seed:
    """A real file split the way the listener sees it: its file meta apart, the data set as received."""

    file_meta: bytes  # preamble, "DICM" and the file meta group
    transfer_syntax: str
    dataset: bytes

    @classmethod
    def read(cls, path: Path) -> Seed:
        meta = pydicom.filereader.read_file_meta_info(path)
        start = 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)  # preamble, DICM, the length element
        data = path.read_bytes()
        return cls(data[:start], str(meta.TransferSyntaxUID), data[start:])


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """``data`` with one to four random mutations, and what was done (for a finding's report)."""
    buf = bytearray(data)
    steps = []
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(("flip", "run", "truncate", "insert", "delete", "length"))
        # most mutations hit the header region, where the parser's decisions are made
        limit = len(buf) if rng.random() < 0.2 else min(len(buf), 6000)
        pos = rng.randrange(0, max(1, limit))
        if op == "flip" and pos < len(buf):
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == "run":
            n = rng.randint(1, 64)
            buf[pos:pos + n] = bytes([rng.choice((0x00, 0xFF, 0x7F, 0x80))]) * n
        elif op == "truncate":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = rng.randbytes(rng.randint(1, 256))
        elif op == "delete":
            del buf[pos:pos + rng.randint(1, 256)]
        elif op == "length" and pos + 8 <= len(buf):
            # an element length field: huge, odd, zero or undefined
            buf[pos:pos + 4] = rng.choice((b"\xff\xff\xff\xff", b"\xfe\xff\xff\x7f", b"\x00\x00\x00\x00",
                                           b"\x01\x00\x00\x00", rng.randbytes(4)))
        steps.append(f"{op}@{pos}")
    return bytes(buf), ",".join(steps)


def run_one(seed: Seed, dataset: bytes) -> str:
    """Parse, decode and preprocess one received data set; return the outcome name (raises on a finding)."""
    from engine.imageio import ImageReadError, dataset_to_gray
    from engine.preprocess import preprocess
    from listener.server import CorruptDataset, read_instance_meta
    from listener.uids import InvalidUID

    try:
        read_instance_meta(dataset, seed.transfer_syntax)
    except InvalidUID:
        return "refused: invalid UID"
    except KeyError:
        return "refused: missing attribute"
    except CorruptDataset:
        return "refused: cannot understand"
    try:
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(seed.file_meta + dataset))
        gray = dataset_to_gray(ds)
        out = preprocess(gray)
    except ImageReadError:
        return "stored, not decodable (job would be not applicable)"
    if not np.isfinite(out).all():
        raise AssertionError("preprocessing produced non-finite values")
    return "stored and analysable"


def fuzz(seeds: Sequence[Path], count: int, seed: int = 0, per_input_s: float = 10.0,
         log_every: int = 0) -> FuzzReport:
    rng = random.Random(seed)
    corpus = [Seed.read(p) for p in seeds]
    report = FuzzReport()
    started = time.perf_counter()

    def _alarm(_signum: int, _frame: object) -> None:
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, _alarm)
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # mutated files make pydicom chatty
    warnings.simplefilter("ignore")
    try:
        for i in range(count):
            chosen = rng.choice(corpus)
            data, how = mutate(chosen.dataset, rng)
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, per_input_s)
            try:
                outcome = run_one(chosen, data)
            except _Timeout:
                outcome = "finding: hang"
                report.findings.append((how, f"no answer within {per_input_s} s"))
            except Exception as exc:  # anything undocumented is a finding
                outcome = "finding: crash"
                report.findings.append((how, f"{type(exc).__name__}: {exc}"[:300]))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            report.slowest_s = max(report.slowest_s, time.perf_counter() - t0)
            report.outcomes[outcome] += 1
            report.inputs += 1
            if log_every and (i + 1) % log_every == 0:
                print(f"  {i + 1} inputs, {len(report.findings)} findings", flush=True)
    finally:
        signal.signal(signal.SIGALRM, previous)
    report.seconds = time.perf_counter() - started
    report.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


def default_seeds(shared_data: Path, workdir: Path) -> list[Path]:
    """Real files: two CT slices (one re-encoded to RLE by pydicom) and the CR."""
    from pydicom.uid import RLELossless

    ct = sorted((shared_data / "dicom" / "ct-covid19-ny-sbu").rglob("axial/*.dcm"))[:2]
    seeds = [*ct, shared_data / "dicom" / "cr-chest" / "RG1_UNCR.dcm"]
    ds = pydicom.dcmread(ct[0])
    ds.compress(RLELossless)
    rle = workdir / "seed-rle.dcm"
    ds.save_as(rle, enforce_file_format=True)
    return [*seeds, rle]


def print_report(report: FuzzReport) -> None:
    print(f"\nfuzzing: {report.inputs} mutated inputs in {report.seconds:.1f} s "
          f"({report.inputs / max(report.seconds, 1e-9):.0f}/s), slowest {report.slowest_s:.2f} s, "
          f"peak RSS {report.peak_rss_mb:.0f} MB")
    for outcome, n in report.outcomes.most_common():
        print(f"  {n:8d}  {outcome}")
    print(f"findings: {len(report.findings)}")
    for how, error in report.findings[:20]:
        print(f"  {how}: {error}")
