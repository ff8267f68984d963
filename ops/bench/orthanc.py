"""Orthanc from Debian as a throwaway PACS on loopback (benchmarks, tests, demos)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ops.bench.net import free_port


class Orthanc:
    """A throwaway Orthanc: REST on 127.0.0.1:http_port, DICOM (AE PACS) on dicom_port."""

    def __init__(self, workdir: Path, modalities: dict[str, list[Any]] | None = None) -> None:
        if shutil.which("Orthanc") is None:
            raise FileNotFoundError("Orthanc is not installed (apt-get install orthanc)")
        self.http_port, self.dicom_port = free_port(), free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "test-pacs",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "PACS",
            "DicomCheckCalledAet": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": modalities or {},
            "Plugins": [],
            "StableAge": 2,
            "DicomScuTimeout": 30,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "OverwriteInstances": True,
        }
        (workdir / "config.json").write_text(json.dumps(config))
        self._log = open(workdir / "orthanc.log", "w")
        self.process = subprocess.Popen(["Orthanc", str(workdir / "config.json")], stdout=self._log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.get("/system")
                break
            except (urllib.error.URLError, ConnectionError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start: {(workdir / 'orthanc.log').read_text()[-2000:]}")
                time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 120) -> Any:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as response:
            raw = response.read()
        if response.headers.get_content_type() == "application/json":
            return json.loads(raw)
        return raw

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, path: Path) -> dict[str, Any]:
        return self.request("POST", "/instances", path.read_bytes())  # type: ignore[no-any-return]

    def add_modality(self, name: str, ae_title: str, port: int) -> None:
        self.request("PUT", f"/modalities/{name}", json.dumps({"AET": ae_title, "Host": "127.0.0.1",
                                                                  "Port": port}).encode())

    def send_study(self, modality: str, study_id: str) -> Any:
        return self.request("POST", f"/modalities/{modality}/store", study_id.encode())

    def series_of(self, study_id: str) -> list[dict[str, Any]]:
        return self.get(f"/studies/{study_id}/series")  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()
