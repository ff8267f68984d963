"""A short, bounded fuzzing run in CI (the benchmark runs 100,000 inputs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ops.bench.fuzz import default_seeds, fuzz
from tests.conftest import full_size


def test_mutated_inputs_are_answered_or_refused_never_crash(
    shared_data: Path, tmp_path: Path, scenario_report: Callable[..., None],
) -> None:
    count = full_size(600, 100_000)
    report = fuzz(default_seeds(shared_data, tmp_path), count, seed=20261124, per_input_s=10.0)
    assert report.inputs == count
    assert report.findings == [], report.findings[:5]
    # the run exercised every stage, not only the first refusal
    assert report.outcomes["stored and analysable"] > 0
    assert report.outcomes["refused: cannot understand"] > 0
    assert report.peak_rss_mb < 2048
    outcomes = ", ".join(f"{n} {name}" for name, n in report.outcomes.most_common())
    scenario_report("fuzzing: mutated real DICOM through parse/decode/preprocess", sent=report.inputs,
                    acknowledged=report.inputs - sum(n for k, n in report.outcomes.items() if k.startswith("refused")),
                    stored=0, lost=0, duplicated=0,
                    note=f"findings {len(report.findings)}; slowest {report.slowest_s:.2f} s; peak RSS "
                         f"{report.peak_rss_mb:.0f} MB; {outcomes}")
