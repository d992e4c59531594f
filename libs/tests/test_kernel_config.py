"""Settings: precedence, validation errors naming the field, secret files."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from llmesh.kernel.config import (
    ConfigError,
    ServiceSettings,
    load_settings,
    read_secret_file,
    service_settings_config,
)


class DemoSettings(ServiceSettings):
    model_config = service_settings_config("demo")

    workers: int = Field(default=2, ge=1)
    label: str = "default"


def test_defaults_then_file_then_env_then_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings(DemoSettings).workers == 2
    config = tmp_path / "demo.yaml"
    config.write_text("workers: 3\nlabel: from-file\nport: 7000\n")
    from_file = load_settings(DemoSettings, config)
    assert (from_file.workers, from_file.label, from_file.port) == (3, "from-file", 7000)
    monkeypatch.setenv("LLMESH_DEMO_WORKERS", "4")
    from_env = load_settings(DemoSettings, config)
    assert (from_env.workers, from_env.label) == (4, "from-file")
    from_flag = load_settings(DemoSettings, config, workers=5, label=None)
    assert (from_flag.workers, from_flag.label) == (5, "from-file")


def test_nested_env_and_config_file_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "demo.json"
    config.write_text('{"label": "json"}')
    monkeypatch.setenv("LLMESH_DEMO_CONFIG_FILE", str(config))
    monkeypatch.setenv("LLMESH_DEMO_METHOD_DEADLINES", '{"Generate": 120}')
    settings = load_settings(DemoSettings)
    assert settings.label == "json"
    assert settings.method_deadlines == {"Generate": 120.0}


def test_bad_value_names_the_field_and_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMESH_DEMO_WORKERS", "0")
    with pytest.raises(ConfigError) as err:
        load_settings(DemoSettings)
    assert "workers" in str(err.value)
    assert "LLMESH_DEMO_WORKERS" in str(err.value)


def test_unknown_setting_in_file_is_rejected(tmp_path: Path) -> None:
    config = tmp_path / "demo.yaml"
    config.write_text("wokers: 3\n")
    with pytest.raises(ConfigError, match="wokers"):
        load_settings(DemoSettings, config)


def test_tls_needs_both_files(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="tls"):
        load_settings(DemoSettings, tls={"cert_file": str(cert)})


def test_loopback_detection() -> None:
    assert load_settings(DemoSettings, host="127.0.0.1").loopback
    assert load_settings(DemoSettings, host="::1").loopback
    assert not load_settings(DemoSettings, host="0.0.0.0").loopback


def test_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("hunter2\n")
    assert read_secret_file(secret) == "hunter2"
    with pytest.raises(ConfigError, match="cannot read secret file"):
        read_secret_file(tmp_path / "missing")
