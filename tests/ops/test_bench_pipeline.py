"""``triage bench pipeline`` runs end to end and prints what it promises: a row per study with every
stage's time, for a warm node and, with ``--first-study``, for a just-started node with and without
preloaded models (a smoke run, 4 slices and a 1 s quiet period: the figures themselves mean something
only from a full run on an idle machine)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ops.bench.pipeline import STAGES, run_pipeline_benchmark
from tests.conftest import require_tools

_NUMBER = r"-?[\d.]+"


def _rows(out: str) -> dict[str, list[dict[str, float]]]:
    """Every study row of the tables, by study: total, each stage, export and other, in seconds."""
    columns = ("total", *STAGES, "export", "other")
    rows: dict[str, list[dict[str, float]]] = {}
    for line in out.splitlines():
        found = re.fullmatch(rf"(CT, \d+ slices|CR, 1 image) +((?:{_NUMBER} +){{{len(columns) - 1}}}{_NUMBER})", line)
        if found:
            rows.setdefault(found[1], []).append(dict(zip(columns, map(float, found[2].split()), strict=True)))
    return rows


def _check_row(row: dict[str, float]) -> None:
    assert row["total"] > 0 and row["infer"] > 0 and row["decode"] > 0 and row["build"] > 0, row
    assert row["export"] > 0, f"the export to the PACS was not timed: {row}"


@pytest.fixture()
def tools() -> None:
    require_tools("storescu", "Orthanc")


def test_warm_node_rows_time_every_stage_of_a_ct_and_the_cr(tools: None, shared_data: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert run_pipeline_benchmark(slices=4, shared_data=str(shared_data), quiet=1.0) == 0
    out = capsys.readouterr().out
    assert "warm node (after a 4-slice CT warm-up study)" in out and "minus the quiet period (1 s)" in out
    rows = _rows(out)
    assert sorted(rows) == ["CR, 1 image", "CT, 4 slices"] and all(len(r) == 1 for r in rows.values()), out
    for (row,) in rows.values():
        _check_row(row)


def test_first_study_compares_models_loaded_at_first_use_with_preloaded(tools: None, shared_data: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert run_pipeline_benchmark(slices=4, shared_data=str(shared_data), quiet=1.0, first_study=True) == 0
    out = capsys.readouterr().out
    assert "first studies after a start, models loaded at first use" in out
    assert "first studies after a start, models preloaded (default)" in out
    rows = _rows(out)
    assert sorted(rows) == ["CR, 1 image", "CT, 4 slices"] and all(len(r) == 2 for r in rows.values()), out
    for study_rows in rows.values():
        for row in study_rows:
            _check_row(row)
    for study in rows:
        assert re.search(rf"^{re.escape(study)}: preloaded {_NUMBER} s vs loaded at first use {_NUMBER} s "
                         rf"\({_NUMBER}x\)$", out, re.M), study
