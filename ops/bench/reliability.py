"""``triage bench reliability``: the fault and bad-input suites at full size, as one table.

The suites are the project's own tests (tests/faults, tests/badinput and the end-to-end crash and
outage tests): real processes, real SIGKILL, real peers on loopback. Run here with RELIABILITY_FULL=1
(fuzzing 100,000 inputs instead of CI's 600), each scenario appends its counts to a report file and
this command prints them. A lost or duplicated instance fails the scenario's test as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUITES = [
    "tests/faults",
    "tests/badinput",
    "tests/e2e/test_worker_crash.py",
    "tests/e2e/test_destination_down.py",
    "tests/listener/test_store_refusals.py::test_database_unavailable_answers_out_of_resources_and_leaves_no_file",
]


def run_reliability_benchmark(extra_pytest_args: list[str] | None = None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "reliability.jsonl"
        env = {**os.environ, "RELIABILITY_REPORT": str(report), "RELIABILITY_FULL": "1"}
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "3600",
                                 *SUITES, *(extra_pytest_args or [])], cwd=REPO, env=env)
        rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    print()
    print(f"{'scenario':58} {'sent':>7} {'acked':>7} {'stored':>7} {'analysed':>8} {'lost':>5} {'dup':>5}")
    for row in rows:
        analysed = "-" if row["analysed"] is None else str(row["analysed"])
        print(f"{row['scenario'][:58]:58} {row['sent']:7d} {row['acknowledged']:7d} {row['stored']:7d} "
              f"{analysed:>8} {row['lost']:5d} {row['duplicated']:5d}")
    for row in rows:
        if row["note"]:
            print(f"  {row['scenario']}: {row['note']}")
    print(f"\npytest exit code {result.returncode} ({'all scenarios passed' if result.returncode == 0 else 'FAILURES'})")
    return result.returncode
