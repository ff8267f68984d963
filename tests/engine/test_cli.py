"""The triage subcommands of the engine, run as a user would (a subprocess of the real CLI)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.calibrate import BOUNDS
from engine.runtimes.int8 import cpu_has_vnni

REPO = Path(__file__).resolve().parents[2]


def _triage(*args: str, weights: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if weights is not None:
        env["TRIAGE_WEIGHTS_DIR"] = str(weights)
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], cwd=REPO, env=env, capture_output=True, check=False,
                          text=True, timeout=timeout)


def test_help_lists_the_engine_commands_without_importing_torch() -> None:
    code = ("import sys, ops.cli\n"
            "try:\n    ops.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
    for command in ("train", "evaluate", "calibrate", "predict", "explain"):
        assert command in out.stdout
    assert out.stdout.strip().endswith("False"), "engine.cli must import torch only inside handlers"


def test_predict_prints_one_json_line_per_input_with_errors_in_place(tiny_weights: Path, ct_dicom: Path,
                                                                     ct_images: list[Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"garbage")
    missing = tmp_path / "missing.dcm"
    inputs = [ct_images[0], junk, ct_dicom, missing]
    res = _triage("predict", "--model", "ct", "--runtime", "torch", *map(str, inputs), weights=tiny_weights)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["path"] for x in lines] == [str(p) for p in inputs]
    for ok in (lines[0], lines[2]):
        assert set(ok) == {"path", "score", "label"}
        assert 0.0 <= ok["score"] <= 1.0 and ok["label"] in ("covid", "non-covid")
    for bad in (lines[1], lines[3]):
        assert set(bad) == {"path", "error"} and bad["path"] in bad["error"]


def test_predict_exits_one_when_nothing_could_be_scored(tiny_weights: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8\xff garbage")
    res = _triage("predict", "--model", "cxr", str(junk), weights=tiny_weights)
    assert res.returncode == 1
    assert "error" in json.loads(res.stdout)


def test_predict_without_weights_says_how_to_make_them(tmp_path: Path) -> None:
    res = _triage("predict", "--model", "ct", "x.png", weights=tmp_path)
    assert res.returncode == 2
    assert "deep-ct-net.safetensors" in res.stderr and "triage train deep-ct-net" in res.stderr


def test_explain_writes_an_overlay_png(tiny_weights: Path, ct_dicom: Path, tmp_path: Path) -> None:
    out = tmp_path / "heat.png"
    res = _triage("explain", "--model", "ct", "--method", "gradcam++", str(ct_dicom), "--out", str(out),
                  weights=tiny_weights)
    assert res.returncode == 0, res.stderr
    with Image.open(out) as im:
        assert im.mode == "RGB" and im.size == (512, 512)
    assert json.loads(res.stdout)["method"] == "gradcam++"


def test_explain_attention_needs_ct_net(tiny_weights: Path, ct_dicom: Path, tmp_path: Path) -> None:
    res = _triage("explain", "--model", "ct", "--method", "attention", str(ct_dicom), "--out",
                  str(tmp_path / "a.png"), weights=tiny_weights)
    assert res.returncode == 2 and "ct-net" in res.stderr
    res = _triage("explain", "--model", "ct", "--network", "ct-net", "--method", "attention", str(ct_dicom),
                  "--out", str(tmp_path / "a.png"), weights=tiny_weights)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("split", ["val"])
def test_evaluate_writes_report_plots_and_paper_numbers(split: str, tiny_weights: Path, shared_data: Path,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "report"
    res = _triage("evaluate", "deep-ct-net", "--split", split, "--out", str(out), "--bootstrap", "100",
                  weights=tiny_weights, timeout=300)
    assert res.returncode == 0, res.stderr
    for name in ("report.md", "metrics.json", "scores.csv", "roc.png", "pr.png", "confusion.png", "histogram.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "0.894" in report and "0.899" in report, "the paper's Table V numbers must sit beside ours"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["at_threshold"]["n"] == 118
    assert len(metrics["threshold_table"]) == 9


@pytest.mark.skipif(not cpu_has_vnni(), reason="int8 runs only on CPUs with VNNI")
def test_evaluate_int8_scores_with_the_int8_model_the_node_runs(shared_data: Path, tmp_path: Path) -> None:
    import shutil

    weights = tmp_path / "weights"
    weights.mkdir()
    for path in (REPO / "engine" / "weights").glob("deep-ct-net.*"):  # the committed weights and ranges
        shutil.copy(path, weights)
    card = (weights / "deep-ct-net.card.json").read_text()
    out = tmp_path / "report"
    res = _triage("evaluate", "deep-ct-net", "--split", "val", "--precision", "int8", "--out", str(out),
                  "--bootstrap", "100", weights=weights, timeout=300)
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["precision"] == "int8" and metrics["at_threshold"]["n"] == 118
    # against the committed fp32 scores of val: int8's own arithmetic, within what triage calibrate holds it to
    # (the figures themselves vary a little with the CPU: the recorded ones came from another machine)
    fp32 = _scores(REPO / "engine" / "weights" / "reports" / "deep-ct-net" / "val" / "scores.csv")
    int8 = _scores(out / "scores.csv")
    assert fp32.keys() == int8.keys()
    change = np.array([abs(int8[k] - fp32[k]) for k in fp32])
    assert 0 < change.max() <= BOUNDS["max_prob_change"] and change.mean() <= BOUNDS["mean_prob_change"]
    recorded = json.loads((weights / "deep-ct-net.int8.json").read_text())["accuracy"]
    assert abs(metrics["at_threshold"]["auc"] - recorded["auc_fp32"]) <= BOUNDS["auc_change"]
    assert (weights / "deep-ct-net.card.json").read_text() == card  # the card describes the fp32 model


@pytest.mark.skipif(not cpu_has_vnni(), reason="int8 runs only on CPUs with VNNI")
def test_calibrate_recheck_holds_the_committed_ranges_to_the_bounds_here(shared_data: Path, tmp_path: Path) -> None:
    import shutil

    weights = tmp_path / "weights"
    weights.mkdir()
    for path in (REPO / "engine" / "weights").glob("deep-ct-net.*"):
        shutil.copy(path, weights)
    committed = (weights / "deep-ct-net.int8.json").read_text()
    res = _triage("calibrate", "deep-ct-net", "--recheck", weights=weights, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "recorded on val" in res.stdout and ": pass" in res.stdout, res.stdout
    assert (weights / "deep-ct-net.int8.json").read_text() == committed, "a recheck writes nothing"
    (weights / "deep-ct-net.int8.json").unlink()
    res = _triage("calibrate", "deep-ct-net", "--recheck", weights=weights, timeout=300)
    assert res.returncode == 1 and "int8 does not run here" in res.stdout and "triage calibrate" in res.stdout


def _scores(path: Path) -> dict[str, float]:
    with path.open(newline="") as f:
        return {row["file"]: float(row["score"]) for row in csv.DictReader(f)}


def test_evaluate_int8_without_ranges_says_how_to_make_them(tiny_weights: Path, shared_data: Path,
                                                            tmp_path: Path) -> None:
    res = _triage("evaluate", "deep-ct-net", "--precision", "int8", "--out", str(tmp_path / "report"),
                  "--bootstrap", "10", weights=tiny_weights, timeout=300)
    assert res.returncode == 2
    assert "int8" in res.stderr and ("triage calibrate" in res.stderr or "VNNI" in res.stderr), res.stderr


@pytest.mark.skipif(not cpu_has_vnni(), reason="triage calibrate runs only on CPUs with VNNI, where int8 runs")
def test_calibrate_prints_the_val_figures_and_writes_ranges_only_within_the_bounds(tiny_weights: Path,
                                                                                   shared_data: Path,
                                                                                   tmp_path: Path) -> None:
    import shutil

    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights, ignore=shutil.ignore_patterns(".onnx-cache"))
    res = _triage("calibrate", "deep-ct-net", "--max-images", "16", weights=weights, timeout=300)
    assert res.returncode in (0, 1), res.stderr
    assert "over 16 train images" in res.stdout and "deep-ct-net on val (118 images): AUC fp32" in res.stdout
    assert "decisions at threshold 0.5000 change" in res.stdout and "bounds: auc_change <= 0.01" in res.stdout
    ranges = weights / "deep-ct-net.int8.json"
    assert ranges.is_file() == (res.returncode == 0)
    if ranges.is_file():
        doc = json.loads(ranges.read_text())
        assert doc["calibration"]["images"] == 16 and doc["accuracy"]["passed"] is True and doc["ranges"]
