"""``triage bench pipeline``: from the last C-STORE response to the SR stored in the PACS.

For a CT study of N slices (512x512, built from the real NY-SBU slices) and for the real CR, the
benchmark sends the study to a node started with ``triage serve`` (embedded SQLite broker, CPU),
waits until Orthanc (the PACS, on loopback) holds the node's SR, and reports that latency minus the
quiet period, with the time of each stage (select, decode, preprocess, infer, explain, build from
the result row; export from the export attempt).
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


def run_pipeline_benchmark(slices: int = 100, shared_data: str | None = None, quiet: float = 2.0) -> int:
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
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update({"TRIAGE_DATA_DIR": str(work / "node"), "TRIAGE_PORT": str(port),
                "TRIAGE_QUIET_SECONDS": str(quiet), "TRIAGE_SWEEP_INTERVAL": "0.2",
                "TRIAGE_DESTINATIONS": f"PACS@127.0.0.1:{orthanc.dicom_port}", "TRIAGE_LOG_LEVEL": "WARNING"})
    node = subprocess.Popen([sys.executable, "-m", "ops.cli", "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    rows = []
    try:
        wait_port(port, 120)
        studies = {
            f"CT, {slices} slices": build_ct_series(axial, work / "ct", slices, study_uid=new_uid()),
            "CR, 1 image": [copy_with_new_identity(cr, work / "cr" / "cr.dcm")],
        }
        warm = build_ct_series(axial, work / "warm", 4, study_uid=new_uid())  # loads the models once
        for name, files in [("warm-up", warm), *studies.items()]:
            import pydicom

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
                    stages, export = _stage_times(work / "node" / "triage.db", study_uid)
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
        orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nLast C-STORE response -> SR stored in Orthanc, minus the quiet period ({quiet:g} s); "
          f"embedded broker; CPU ({os.cpu_count()} cores)")
    header = f"{'study':18} {'total s':>8} " + " ".join(f"{s:>10}" for s in (*STAGES, "export")) + f" {'other':>8}"
    print(header)
    for name, latency, stages, export in rows:
        known = sum(stages.get(s, 0.0) for s in STAGES) + export
        cells = " ".join(f"{stages.get(s, 0.0):10.3f}" for s in STAGES)
        print(f"{name:18} {latency:8.2f} {cells} {export:10.3f} {latency - known:8.2f}")
    print("other = queueing, broker polling (the embedded SQLite broker polls once a second), worker hand-offs")
    return 0


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
