"""Typed settings per service: defaults < config file < ``LLMESH_<SERVICE>_*`` env.

Every service subclasses :class:`ServiceSettings`, sets ``model_config`` with
:func:`service_settings_config`, and loads with :func:`load_settings`, which fails
fast with a :class:`ConfigError` naming each bad field.
"""

from __future__ import annotations

import ipaddress
import json
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

S = TypeVar("S", bound="ServiceSettings")


class ConfigError(Exception):
    """Invalid configuration; the message names every bad field and what to fix."""


def service_settings_config(service: str) -> SettingsConfigDict:
    """Settings config for ``service``: env prefix ``LLMESH_<SERVICE>_``, nested ``__``."""
    return SettingsConfigDict(
        env_prefix=f"LLMESH_{service.upper()}_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind or client address) only means this machine."""
    if host in {"localhost", "127.0.0.1", "::1", "[::1]"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_secret_file(path: Path | None) -> str | None:
    """Read a secret (e.g. a mounted Kubernetes Secret) from a file, stripped."""
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from exc


class TlsSettings(BaseModel):
    """Server TLS (and mTLS when ``client_ca_file`` is set). Paths to PEM files."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None and self.key_file is not None

    @model_validator(mode="after")
    def _both_or_neither(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both cert_file and key_file, or neither")
        for name in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file {path}")
        return self


class ClientTlsSettings(BaseModel):
    """TLS for outbound calls between services (mTLS when cert and key are set)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name_override: str | None = None

    @property
    def enabled(self) -> bool:
        return self.ca_file is not None


class ServiceSettings(BaseSettings):
    """Settings every service shares. Subclasses add their own fields."""

    model_config = service_settings_config("service")

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    """Address of the Prometheus endpoint (``0.0.0.0`` in a pod, for the scraper). Any
    non-loopback address needs ``metrics_token_file``."""
    metrics_token_file: Path | None = None
    """A file holding the bearer token every ``/metrics`` scrape must present (a mounted
    Secret; re-read on each scrape, so a rotated Secret applies without a restart).
    Unset: only loopback callers may scrape."""
    health_port: int | None = Field(default=None, ge=0, le=65535)
    """A second, plaintext port serving only ``grpc.health.v1`` (Kubernetes' native gRPC
    probes cannot speak TLS); unset: none."""
    allow_plaintext: bool = False
    """Allow a non-loopback bind without TLS (a dev cluster's private namespace only)."""
    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern="^(json|text)$")
    grace_period_s: float = Field(default=10.0, gt=0, le=600)
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    default_deadline_s: float = Field(default=30.0, gt=0)
    max_deadline_s: float = Field(default=300.0, gt=0)
    method_deadlines: dict[str, float] = Field(default_factory=dict)
    keepalive_time_s: float = Field(default=30.0, gt=0)
    keepalive_timeout_s: float = Field(default=10.0, gt=0)
    max_concurrent_rpcs: int | None = Field(default=None, ge=1)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    client_tls: ClientTlsSettings = Field(default_factory=ClientTlsSettings)
    otlp_endpoint: str | None = None
    reflection: bool = True
    data_dir: Path = Field(default_factory=lambda: Path(os.environ.get("LLMESH_HOME", "~/.llmesh")))

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return upper

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _deadlines(self) -> ServiceSettings:
        if self.default_deadline_s > self.max_deadline_s:
            raise ValueError("default_deadline_s must not exceed max_deadline_s")
        return self

    @model_validator(mode="after")
    def _metrics_exposure(self) -> ServiceSettings:
        if self.metrics_token_file is not None:
            try:
                token = self.metrics_token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(
                    f"metrics_token_file: cannot read {self.metrics_token_file} ({exc.strerror})"
                ) from None
            if not token:
                raise ValueError(f"metrics_token_file: {self.metrics_token_file} is empty")
        elif self.metrics_port is not None and not is_loopback(self.metrics_host):
            raise ValueError(
                f"metrics_host {self.metrics_host!r} is not loopback: set metrics_token_file "
                "(a file holding the bearer token scrapers must send) or bind 127.0.0.1"
            )
        return self

    @property
    def loopback(self) -> bool:
        """Whether ``host`` only accepts local connections."""
        return is_loopback(self.host)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: explicit overrides (CLI flags), environment, config file.
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))


# The parsed config file of the load in progress (read by _ConfigFileSource).
_file_values: ContextVar[dict[str, Any] | None] = ContextVar("llmesh_config_file", default=None)


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values from the YAML/JSON config file given to :func:`load_settings`."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        values = _file_values.get() or {}
        return values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_values.get() or {})


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} is not valid YAML/JSON: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting names to values")
    return data


def _format_errors(cls: type[BaseSettings], exc: ValidationError) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "(settings)"
        env = prefix + "__".join(str(p) for p in err["loc"]).upper() if err["loc"] else ""
        hint = f" (env {env})" if env else ""
        lines.append(f"  {loc}{hint}: {err['msg']}")
    return f"invalid {cls.__name__} configuration:\n" + "\n".join(lines)


def load_settings(
    cls: type[S],
    config_file: Path | str | None = None,
    **overrides: Any,
) -> S:
    """Load ``cls`` from defaults < ``config_file`` < env < ``overrides``.

    ``None`` values in ``overrides`` are ignored (unset CLI flags). Raises
    :class:`ConfigError` naming each bad field.
    """
    values: dict[str, Any] = {}
    prefix = str(cls.model_config.get("env_prefix", ""))
    file_from_env = os.environ.get(f"{prefix}CONFIG_FILE")
    path = Path(config_file) if config_file else (Path(file_from_env) if file_from_env else None)
    if path is not None:
        values.update(_read_config_file(path.expanduser()))
    explicit = {k: v for k, v in overrides.items() if v is not None}
    token = _file_values.set(values)
    try:
        return cls(**explicit)
    except ValidationError as exc:
        raise ConfigError(_format_errors(cls, exc)) from None
    finally:
        _file_values.reset(token)
