"""``triage bench inference`` runs end to end and prints what the issue asks for (a smoke run with
tiny durations: the figures themselves are only meaningful from a full run on an idle machine)."""

from __future__ import annotations

import pytest

from ops.bench.inference import run_inference_benchmark


def test_inference_benchmark_prints_tables_ratios_stages_and_targets(capsys: pytest.CaptureFixture[str],
                                                                     shared_data: object) -> None:
    assert run_inference_benchmark(["ct-net"], [1, 2], seconds=0.2, rounds=1, study_slices=4,
                                   shared_data=str(shared_data)) == 0
    out = capsys.readouterr().out
    assert "| runtime | precision | batch | slices/s | p50 ms | p99 ms | vs eager fp32 | detail |" in out
    rows = [line for line in out.splitlines() if line.startswith(("| torch |", "| onnxruntime |"))]
    assert len(rows) == 6 and all(line.count("|") == 9 for line in rows)
    assert "| torch | fp32 | 1 |" in out and "| 1.00x |" in out
    assert "| onnxruntime | fp32 | 2 |" in out and "| onnxruntime | int8 | 2 |" in out
    for stage in ("| decode |", "| preprocess (CPU, NumPy) |", "| infer |"):
        assert stage in out
    assert "4-slice CT study, inference only (ct-net, onnxruntime fp32 on cpu" in out
    assert "ct-net: default runtime (onnxruntime)" in out and "target >= 2.0x" in out
