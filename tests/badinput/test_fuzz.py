"""A short, bounded fuzzing run in CI (the benchmark runs 100,000 inputs)."""

from __future__ import annotations

from pathlib import Path

from ops.bench.fuzz import default_seeds, fuzz


def test_mutated_inputs_are_answered_or_refused_never_crash(shared_data: Path, tmp_path: Path) -> None:
    report = fuzz(default_seeds(shared_data, tmp_path), 600, seed=20261124, per_input_s=10.0)
    assert report.inputs == 600
    assert report.findings == [], report.findings[:5]
    # the run exercised every stage, not only the first refusal
    assert report.outcomes["stored and analysable"] > 0
    assert report.outcomes["refused: cannot understand"] > 0
    assert report.peak_rss_mb < 2048
