"""Settings: environment, TOML file, precedence and the operator-facing errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.cli import main
from ops.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TRIAGE_") and name != "TRIAGE_SHARED_DATA":
            monkeypatch.delenv(name)


def test_embedded_defaults_need_no_services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'triage-data' / 'triage.db'}"
    assert settings.broker_url is None
    assert settings.allowed_aes == []
    assert settings.port == 11112


def test_a_relative_data_dir_is_taken_from_the_folder_the_node_starts_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRIAGE_DATA_DIR", "node/data")
    settings = load_settings()
    monkeypatch.chdir("/")  # an operator's command elsewhere reads the paths the node recorded
    assert settings.data_dir == tmp_path / "node" / "data"
    assert settings.results_dir == tmp_path / "node" / "data" / "results"
    assert settings.storage_dir.is_absolute()


def test_environment_lists_and_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_ALLOWED_AES", "CT_SCANNER, PACS1")
    monkeypatch.setenv("TRIAGE_QUIET_SECONDS", "2.5")
    monkeypatch.setenv("TRIAGE_ALLOWED_HOSTS", "127.0.0.1,10.0.0.0/8")
    settings = load_settings()
    assert settings.allowed_aes == ["CT_SCANNER", "PACS1"]
    assert settings.quiet_seconds == 2.5
    assert settings.allowed_hosts == ["127.0.0.1", "10.0.0.0/8"]


def test_toml_file_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "triage.toml"
    config.write_text('ae_title = "FROMFILE"\nport = 4242\nallowed_aes = ["A", "B"]\n')
    monkeypatch.setenv("TRIAGE_PORT", "5555")
    settings = load_settings(config)
    assert settings.ae_title == "FROMFILE"
    assert settings.allowed_aes == ["A", "B"]
    assert settings.port == 5555


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("TRIAGE_PORT", "eleven", "TRIAGE_PORT = 'eleven'"),
        ("TRIAGE_PORT", "70000", "less than or equal to 65535"),
        ("TRIAGE_QUIET_SECONDS", "-1", "TRIAGE_QUIET_SECONDS"),
        ("TRIAGE_AE_TITLE", "A_TITLE_FAR_TOO_LONG", "TRIAGE_AE_TITLE"),
        ("TRIAGE_ALLOWED_HOSTS", "not-an-address", "not an IP address"),
    ],
)
def test_bad_values_name_the_setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert expected in str(info.value)
    assert f"Fix: set {name}" in str(info.value) or "not an IP address" in str(info.value)


def test_misspelt_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_QUIET_SECOND", "3")
    with pytest.raises(ConfigError, match="did you mean TRIAGE_QUIET_SECONDS"):
        load_settings()


def test_unknown_key_in_file(tmp_path: Path) -> None:
    config = tmp_path / "triage.toml"
    config.write_text("quiet_secs = 3\n")
    with pytest.raises(ConfigError, match="did you mean 'quiet_seconds'"):
        load_settings(config)


def test_cli_reports_config_errors_with_exit_code_2(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TRIAGE_PORT", "x")
    assert main(["config"]) == 2
    assert "TRIAGE_PORT" in capsys.readouterr().err


def test_ceiling_below_quiet_period_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_QUIET_SECONDS", "60")
    monkeypatch.setenv("TRIAGE_COMPLETION_CEILING_SECONDS", "30")
    with pytest.raises(ConfigError, match="completion_ceiling_seconds must be at least quiet_seconds"):
        load_settings()
