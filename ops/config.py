"""Settings of the triage node, from ``TRIAGE_<NAME>`` environment variables and an optional TOML file.

Every setting has one environment variable (``TRIAGE_`` + the field name in upper case) and the same
name in lower case in the TOML file given by ``--config``. The environment wins over the file, the file
over the embedded defaults, so a hospital can keep a reviewed file and still override one value per
container. Settings are validated when a service starts: a bad value stops it with a message that names
the variable and says how to fix it, instead of failing later in the middle of a transfer.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

#: URL scheme of the embedded broker (workers.embedded_broker): kombu's SQLite transport, polled faster.
EMBEDDED_BROKER_SCHEME = "triage-sqla"
ENV_PREFIX = "TRIAGE_"

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE VR: no backslash, no control chars
_config_file: ContextVar[Path | None] = ContextVar("triage_config_file", default=None)


class ConfigError(Exception):
    """A setting is missing or wrong; the message names it and says how to fix it."""


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the TOML file chosen with ``--config`` (or ``TRIAGE_CONFIG``)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path is None:
            return
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file {path} does not exist: fix the --config path") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {path} is not valid TOML ({exc}): fix its syntax") from exc
        known = set(settings_cls.model_fields)
        for key, value in raw.items():
            name = key.lower()
            if name not in known:
                raise ConfigError(
                    f"configuration file {path}: unknown setting {key!r}{_did_you_mean(name, known)}"
                )
            self._data[name] = value

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _did_you_mean(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else "; remove it"


def _split_list(value: Any) -> Any:
    """Comma-separated lists in the environment, real lists in TOML."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """All settings of the node, with their embedded defaults (SQLite, no external services)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    # storage and record
    data_dir: Path = Field(
        default=Path("triage-data"),
        description="Folder for stored instances and the default SQLite database.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; empty means SQLite at DATA_DIR/triage.db. PostgreSQL: "
        "postgresql+psycopg://user@host/db",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL (redis://host:6379/0 in production); empty means the embedded "
        "SQLite broker under DATA_DIR.",
    )

    # DICOM network
    host: str = Field(default="127.0.0.1", description="Address the listener binds (0.0.0.0 for all).")
    port: int = Field(default=11112, ge=1, le=65535, description="TCP port of the listener.")
    ae_title: str = Field(default="TRIAGE", description="The node's own AE title (called AE).")
    allowed_aes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Calling AE titles allowed to connect; empty allows any."
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Source addresses or networks (CIDR) allowed to connect; empty allows any.",
    )
    max_associations: int = Field(
        default=16, ge=1, le=1000, description="Concurrent associations (per listener process)."
    )
    listener_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Listener processes sharing the DICOM port (Linux SO_REUSEPORT). One process receives "
        "on about one core (Python's GIL); with several senders at once, N processes use N cores.",
    )
    max_pdu: int = Field(
        default=1_048_576,
        ge=0,
        description="Largest PDU the listener accepts, bytes (0 = no limit). Larger PDUs move big "
        "slices with fewer round trips.",
    )
    acse_timeout: float = Field(default=30.0, gt=0, description="Association negotiation timeout, s.")
    dimse_timeout: float = Field(default=60.0, gt=0, description="DIMSE message timeout, s.")
    network_timeout: float = Field(default=60.0, gt=0, description="Idle network timeout, s.")
    tls_cert: Path | None = Field(default=None, description="PEM certificate: enables TLS when set.")
    tls_key: Path | None = Field(default=None, description="PEM private key for TLS_CERT.")
    tls_ca: Path | None = Field(default=None, description="PEM CA bundle to verify client certificates.")
    tls_require_client_cert: bool = Field(default=False, description="Refuse TLS peers without a cert.")

    # study completion
    quiet_seconds: float = Field(
        default=30.0, gt=0, description="A study is complete when no instance arrived for this long, s."
    )
    completion_ceiling_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="A study still receiving after this long is completed anyway, s.",
    )
    sweep_interval: float = Field(
        default=0.2, gt=0, description="How often completion is checked, s: a study completes on average half of "
        "this after its quiet period (one indexed SELECT per check)."
    )
    dispatch_interval: float = Field(
        default=0.1, gt=0, description="How often the dispatcher looks for queued work to publish, s."
    )
    broker_poll_seconds: float = Field(
        default=0.1, gt=0, description="How often workers look for tasks in the embedded SQLite broker, s "
        "(Redis pushes them)."
    )
    durable_commit: bool = Field(
        default=True,
        description="SQLite: fsync every commit (synchronous=FULL). Turn off only for throwaway nodes.",
    )

    # workers and export
    destinations: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Where results are sent by C-STORE: AE@host:port, comma separated (empty: none).",
    )
    export_retry_base_seconds: float = Field(
        default=10.0, gt=0, description="First retry delay of a failed export, s (doubles each time)."
    )
    export_retry_max_seconds: float = Field(default=600.0, gt=0, description="Longest delay between retries, s.")
    export_max_attempts: int = Field(
        default=200, ge=1, description="Attempts before an export is marked failed (about a day by default)."
    )
    export_tls_ca: Path | None = Field(
        default=None, description="PEM CA bundle: when set, exports use TLS and verify the PACS against it."
    )
    export_tls_cert: Path | None = Field(default=None, description="PEM client certificate for TLS exports.")
    export_tls_key: Path | None = Field(default=None, description="PEM private key of EXPORT_TLS_CERT.")
    job_visibility_timeout: int = Field(
        default=3600,
        ge=10,
        description="Seconds before the broker redelivers an unacknowledged job (longer than the longest job).",
    )
    worker_concurrency: int = Field(default=1, ge=1, le=64, description="Jobs one worker runs at once.")
    worker_pool: Literal["prefork", "threads", "solo"] = Field(
        default="prefork",
        description="Celery pool: prefork (a killed job process is redelivered at once) or threads (the jobs "
        "share one model and, on a GPU, their slices share batches).",
    )
    preload_models: bool = Field(
        default=True,
        description="Load both models when a worker process starts, so the first study after a start is "
        "answered as fast as the rest (on a GPU the TensorRT engine is built then); false loads them at first use.",
    )
    key_slices: int = Field(default=3, ge=1, le=20, description="Key slices per CT study given heatmaps.")

    # logging
    log_format: Literal["json", "kv"] = Field(default="json", description="One line per event: json or kv.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")

    @field_validator("allowed_aes", "allowed_hosts", "destinations", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, value: Path) -> Path:
        # Made absolute once, against the folder the process starts in: the paths the node records
        # (result files) must mean the same to an operator's command run from another folder.
        return value.expanduser().absolute()

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        value = value.strip()
        if not _AE_TITLE.match(value):
            raise ValueError("must be 1 to 16 printable ASCII characters without backslash")
        return value

    @field_validator("allowed_aes")
    @classmethod
    def _allowed_aes(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _AE_TITLE.match(value):
                raise ValueError(f"{value!r} is not an AE title (1 to 16 printable ASCII characters)")
        return values

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not an IP address or CIDR network") from exc
        return values

    @field_validator("destinations")
    @classmethod
    def _destinations(cls, values: list[str]) -> list[str]:
        for value in values:
            parse_destination(value)
        return values

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        if self.completion_ceiling_seconds < self.quiet_seconds:
            raise ValueError(
                "completion_ceiling_seconds must be at least quiet_seconds "
                f"({self.completion_ceiling_seconds} < {self.quiet_seconds})"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if (self.export_tls_cert is None) != (self.export_tls_key is None):
            raise ValueError("export_tls_cert and export_tls_key must be set together")
        if self.export_tls_cert is not None and self.export_tls_ca is None:
            raise ValueError("export_tls_cert needs export_tls_ca (the CA that signed the PACS certificate)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls, _config_file.get()))

    # derived values -------------------------------------------------------------------------
    @property
    def storage_dir(self) -> Path:
        """Root of the stored instances; nothing is ever written outside it."""
        return self.data_dir / "storage"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'triage.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        """Redis in production; else kombu's SQLAlchemy transport on SQLite: durable, no server."""
        if self.broker_url:
            return self.broker_url
        return f"{EMBEDDED_BROKER_SCHEME}+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def results_dir(self) -> Path:
        """The DICOM objects the workers write (SR, SC) before and after export."""
        return self.data_dir / "results"


_DESTINATION = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[0-9a-fA-F:]+\]|[^:@\[\]]+):(?P<port>[0-9]{1,5})$")


def parse_destination(value: str) -> tuple[str, str, int]:
    """``AE@host:port`` -> (AE title, host, port), or ValueError saying what is wrong."""
    match = _DESTINATION.match(value.strip())
    if not match or not _AE_TITLE.match(match["ae"]) or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"{value!r} is not AE@host:port (e.g. PACS@10.0.0.5:104)")
    return match["ae"], match["host"].strip("[]"), int(match["port"])


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build validated settings or raise :class:`ConfigError` naming the bad setting."""
    if config_file is None and os.environ.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(os.environ[ENV_PREFIX + "CONFIG"])
    _check_unknown_env()
    token = _config_file.set(config_file)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None
    finally:
        _config_file.reset(token)


def _check_unknown_env() -> None:
    """A misspelt variable would silently be ignored; say so instead."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | {ENV_PREFIX + "CONFIG"}
    known |= EXTRA_ENV
    for name in os.environ:
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else "; unset it"
            raise ConfigError(f"unknown setting {name}{hint}")


# Variables read by other parts of the product (the engine's runtime choice and data location).
EXTRA_ENV: set[str] = {ENV_PREFIX + name for name in (
    "RUNTIME", "SHARED_DATA", "WEIGHTS_DIR", "ORT_THREADS", "CPU_PRECISION", "GPU_PREPROCESS")}


def _explain(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ()) if isinstance(part, str)]
        if loc:
            name = loc[0]
            field = Settings.model_fields.get(name)
            hint = f" ({field.description})" if field is not None and field.description else ""
            value = error.get("input")
            shown = f" = {value!r}" if value is not None and not isinstance(value, dict) else ""
            lines.append(
                f"  {ENV_PREFIX}{name.upper()}{shown}: {error['msg']}{hint}. "
                f"Fix: set {ENV_PREFIX}{name.upper()} (or '{name}' in the --config file) to a valid value."
            )
        else:
            lines.append(f"  {error['msg']}")
    return "\n".join(lines)
