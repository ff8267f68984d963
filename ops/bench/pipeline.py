"""``triage bench pipeline``: from the last C-STORE response to the SR stored in the PACS.

For a CT study of N slices (512x512, built from the real NY-SBU slices) and for the real CR, the
benchmark sends the study to a node started with ``triage serve`` (embedded SQLite broker, CPU),
waits until Orthanc (the PACS, on loopback) holds the node's SR, and reports that latency minus the
quiet period, with the time of each stage (select, decode, preprocess, infer, explain, build from
the result row; export from the export attempt). ``--first-study`` measures the first studies a
just-started node receives instead, once with the models loaded at first use and once preloaded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ops.bench.net import DCMTK_ENV, DEFAULT_SHARED, free_port, wait_port
from ops.bench.orthanc import Orthanc
from ops.bench.series import build_ct_series, copy_with_new_identity, new_uid
from ops.dcmtk import dcmtk, find_dcmtk

STAGES = ("select", "decode", "preprocess", "infer", "explain", "build")


def _sr_in(orthanc: Orthanc, study_uid: str) -> bool:
    found = orthanc.request("POST", "/tools/find", (
        '{"Level": "Series", "Query": {"StudyInstanceUID": "%s", "Modality": "SR"}}' % study_uid).encode())
    return bool(found)


Row = tuple[str, float, dict[str, float], float]  # study, latency s, stage seconds, export seconds


def run_pipeline_benchmark(slices: int = 100, shared_data: str | None = None, quiet: float = 2.0,
                           first_study: bool = False) -> int:
    """Print the latency table; ``first_study`` measures a just-started node instead of a warm one,
    once with the models loaded at first use and once preloaded (``TRIAGE_PRELOAD_MODELS``)."""
    if find_dcmtk("storescu") is None or shutil.which("Orthanc") is None:
        print("triage bench pipeline: dcmtk's storescu or Orthanc not found: apt-get install dcmtk orthanc",
              file=sys.stderr)
        return 2
    data = Path(shared_data) if shared_data else Path(os.environ.get("TRIAGE_SHARED_DATA", DEFAULT_SHARED))
    axial = [p for p in sorted((data / "dicom" / "ct-covid19-ny-sbu").rglob("axial/*.dcm"))
             if p.stat().st_size < 600_000]
    cr = data / "dicom" / "cr-chest" / "RG1_UNCR.dcm"
    if not axial or not cr.is_file():
        print(f"triage bench pipeline: real DICOM not found under {data}: pass --data", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="triage-bench-pipeline-"))
    orthanc = Orthanc(work / "orthanc")

    def studies(folder: Path) -> dict[str, list[Path]]:  # new UIDs for every node run
        return {
            f"CT, {slices} slices": build_ct_series(axial, folder / "ct", slices, study_uid=new_uid()),
            "CR, 1 image": [copy_with_new_identity(cr, folder / "cr" / "cr.dcm")],
        }

    sections: list[tuple[str, list[Row]]] = []
    try:
        if first_study:
            for preload, title in ((False, "models loaded at first use"), (True, "models preloaded (default)")):
                folder = work / f"preload-{preload}"
                rows = _run_node(folder, orthanc, studies(folder), quiet=quiet, warm_up=None, preload=preload)
                sections.append((f"first studies after a start, {title}", rows))
        else:
            warm = build_ct_series(axial, work / "warm", 4, study_uid=new_uid())
            rows = _run_node(work / "warm-node", orthanc, studies(work), quiet=quiet, warm_up=warm, preload=True)
            sections.append(("warm node (after a 4-slice CT warm-up study)", rows))
    finally:
        orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nLast C-STORE response -> SR stored in Orthanc, minus the quiet period ({quiet:g} s); "
          f"embedded broker; CPU ({os.cpu_count()} cores)")
    for title, rows in sections:
        print(title)
        header = f"{'study':18} {'total s':>8} " + " ".join(f"{s:>10}" for s in (*STAGES, "export")) + f" {'other':>8}"
        print(header)
        for name, latency, stages, export in rows:
            known = sum(stages.get(s, 0.0) for s in STAGES) + export
            cells = " ".join(f"{stages.get(s, 0.0):10.3f}" for s in STAGES)
            print(f"{name:18} {latency:8.2f} {cells} {export:10.3f} {latency - known:8.2f}")
    if len(sections) == 2:
        for (name, cold, *_), (_, warm_, *_) in zip(sections[0][1], sections[1][1], strict=True):
            print(f"{name}: preloaded {warm_:.2f} s vs loaded at first use {cold:.2f} s ({cold / warm_:.2f}x)")
    print("other = queueing, broker polling (the embedded broker every TRIAGE_BROKER_POLL_SECONDS), worker hand-offs, "
          "and loading a model where it was not loaded yet")
    return 0


def _run_node(folder: Path, orthanc: Orthanc, studies: dict[str, list[Path]], *, quiet: float,
              warm_up: list[Path] | None, preload: bool) -> list[Row]:
    """Start ``triage serve`` in ``folder``, send the warm-up (if any) then each study, time each SR."""
    import pydicom

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update({"TRIAGE_DATA_DIR": str(folder / "node"), "TRIAGE_PORT": str(port),
                "TRIAGE_QUIET_SECONDS": str(quiet), "TRIAGE_SWEEP_INTERVAL": "0.2",
                "TRIAGE_PRELOAD_MODELS": str(preload).lower(),
                "TRIAGE_DESTINATIONS": f"PACS@127.0.0.1:{orthanc.dicom_port}", "TRIAGE_LOG_LEVEL": "WARNING"})
    node = subprocess.Popen([sys.executable, "-m", "ops.cli", "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    rows: list[Row] = []
    try:
        wait_port(port, 120)
        sends = ([("warm-up", warm_up)] if warm_up else []) + list(studies.items())
        for name, files in sends:
            study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
            result = subprocess.run([dcmtk("storescu"), "-aec", "TRIAGE", "-R", "127.0.0.1", str(port),
                                     *map(str, files)], env=DCMTK_ENV, capture_output=True, text=True)
            last_response = time.perf_counter()
            if result.returncode != 0:
                raise RuntimeError(f"storescu failed: {result.stderr[-500:]}")
            deadline = time.monotonic() + 900
            while not _sr_in(orthanc, study_uid):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no SR in the PACS for {name} after 900 s")
                time.sleep(0.1)
            latency = time.perf_counter() - last_response - quiet
            if name != "warm-up":
                # the export attempt is recorded just after the PACS answered: give it a moment
                for _ in range(50):
                    stages, export = _stage_times(folder / "node" / "triage.db", study_uid)
                    if export > 0:
                        break
                    time.sleep(0.1)
                rows.append((name, latency, stages, export))
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
    return rows


def _stage_times(database: Path, study_uid: str) -> tuple[dict[str, float], float]:
    import json
    import sqlite3

    with sqlite3.connect(database) as conn:
        timings, result_id = conn.execute(
            "SELECT r.timings, r.id FROM results r JOIN studies s ON s.id = r.study_id WHERE s.study_uid = ? "
            "ORDER BY r.id DESC LIMIT 1", (study_uid,)).fetchone()
        export = conn.execute(
            "SELECT a.started_at, a.finished_at FROM export_attempts a JOIN exports e ON e.id = a.export_id "
            "WHERE e.result_id = ? AND a.ok ORDER BY a.id DESC LIMIT 1", (result_id,)).fetchone()
    from datetime import datetime

    export_s = 0.0
    if export and export[1]:
        export_s = (datetime.fromisoformat(export[1]) - datetime.fromisoformat(export[0])).total_seconds()
    return json.loads(timings), export_s
