"""The deployment files agree with the code: compose services run real subcommands."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from ops.cli import build_parser
from tests.conftest import REPO


def _subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return set(action.choices)  # type: ignore[arg-type]


def test_compose_services_run_existing_subcommands() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "listener", "worker-gpu", "worker-cpu", "orthanc"} <= set(services)
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["orthanc"]["profiles"] == ["demo"]
    ours = [name for name, svc in services.items() if svc.get("image") == "covid-triage-node:latest"]
    assert ours, "no service runs the node's image"
    for name in ours:
        assert services[name]["command"][0] in _subcommands(), name
        assert services[name]["environment"]["TRIAGE_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert (REPO / services["listener"]["build"]["dockerfile"]).is_file()


def test_compose_file_parses_with_docker_compose_where_available() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed here")
    result = subprocess.run([docker, "compose", "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_subcommand_explains_itself() -> None:
    for command in _subcommands():
        result = subprocess.run([sys.executable, "-m", "ops.cli", command, "--help"], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0 and "usage: " in result.stdout, command
