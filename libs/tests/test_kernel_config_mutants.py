"""Settings validation messages and file/env precedence, exactly (kills config.py's
mutants: docs/quality.md). The message is what an operator reads at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from llmesh.kernel import config
from llmesh.kernel.config import (
    ClientTlsSettings,
    ConfigError,
    ServiceSettings,
    TlsSettings,
    is_loopback,
    load_settings,
    read_secret_file,
    service_settings_config,
)


class DemoSettings(ServiceSettings):
    model_config = service_settings_config("demo")

    workers: int = Field(default=2, ge=1)
    label: str = "default"


def _error(**overrides: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(DemoSettings, **overrides)
    return str(info.value)


def test_service_settings_config() -> None:
    assert service_settings_config("gateway") == {
        "env_prefix": "LLMESH_GATEWAY_",
        "env_nested_delimiter": "__",
        "extra": "forbid",
        "validate_default": True,
    }


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("[0:0:0:0:0:0:0:1]", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("example.com", False),
        ("X127.0.0.1", False),
        ("[127.0.0.1]X", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_read_secret_file(tmp_path: Path) -> None:
    assert read_secret_file(None) is None
    secret = tmp_path / "s"
    secret.write_text("  tok \n", encoding="utf-8")
    assert read_secret_file(secret) == "tok"
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError) as info:
        read_secret_file(missing)
    assert str(info.value) == f"cannot read secret file {missing}: No such file or directory"
    assert isinstance(info.value.__cause__, OSError)


def test_server_tls(tmp_path: Path) -> None:
    assert not TlsSettings().enabled
    cert, key, ca = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    for path in (cert, key, ca):
        path.write_text("x")
    tls = TlsSettings(cert_file=cert, key_file=key)
    assert tls.enabled
    assert TlsSettings(cert_file=cert, key_file=key, client_ca_file=ca).enabled
    for fields in ({"cert_file": cert}, {"key_file": key}):
        with pytest.raises(ValueError, match="set both cert_file and key_file, or neither"):
            TlsSettings(**fields)  # type: ignore[arg-type]
    for name in ("cert_file", "key_file", "client_ca_file"):
        fields = {"cert_file": cert, "key_file": key, name: tmp_path / "nope.pem"}
        with pytest.raises(ValueError) as info:
            TlsSettings(**fields)  # type: ignore[arg-type]
        assert f"{name}: no such file {tmp_path / 'nope.pem'}" in str(info.value)
    with pytest.raises(ValueError, match="no such file"):
        TlsSettings(client_ca_file=tmp_path / "nope.pem")


def test_client_tls(tmp_path: Path) -> None:
    assert not ClientTlsSettings().enabled
    assert not ClientTlsSettings(cert_file=tmp_path / "c", key_file=tmp_path / "k").enabled
    assert ClientTlsSettings(ca_file=tmp_path / "ca").enabled


def test_defaults_and_derived(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path / "home"))
    settings = load_settings(DemoSettings, host="10.0.0.1", port=1234)
    assert settings.address == "10.0.0.1:1234"
    assert not settings.loopback
    assert load_settings(DemoSettings).loopback
    assert settings.data_dir == tmp_path / "home"
    assert settings.log_level == "INFO"


def test_data_dir_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_settings(DemoSettings, data_dir="~/x").data_dir == tmp_path / "x"


@pytest.mark.parametrize("level", ["debug", "Info", "WARNING", "error", "critical"])
def test_log_level_is_upper_cased(level: str) -> None:
    assert load_settings(DemoSettings, log_level=level).log_level == level.upper()


def test_a_bad_log_level_names_the_choices() -> None:
    assert _error(log_level="verbose") == (
        "invalid DemoSettings configuration:\n"
        "  log_level (env LLMESH_DEMO_LOG_LEVEL): Value error, must be one of DEBUG, INFO, "
        "WARNING, ERROR, CRITICAL"
    )


def test_default_deadline_may_equal_but_not_exceed_the_maximum() -> None:
    same = load_settings(DemoSettings, default_deadline_s=5.0, max_deadline_s=5.0)
    assert same.default_deadline_s == 5.0
    assert _error(default_deadline_s=6.0, max_deadline_s=5.0) == (
        "invalid DemoSettings configuration:\n"
        "  (settings): Value error, default_deadline_s must not exceed max_deadline_s"
    )


def test_nested_errors_name_the_nested_env_var() -> None:
    message = _error(tls={"cert_file": ["not", "a", "path"]}, workers=0)
    lines = message.splitlines()
    assert lines[0] == "invalid DemoSettings configuration:"
    assert lines[1].startswith("  tls.cert_file (env LLMESH_DEMO_TLS__CERT_FILE): ")
    assert lines[2].startswith("  workers (env LLMESH_DEMO_WORKERS): ")
    assert "greater than or equal to 1" in lines[2]


def test_metrics_exposure(tmp_path: Path) -> None:
    assert load_settings(DemoSettings, metrics_port=9000).metrics_host == "127.0.0.1"
    assert load_settings(DemoSettings, metrics_host="0.0.0.0").metrics_port is None
    message = _error(metrics_port=9000, metrics_host="0.0.0.0")
    assert message.endswith(
        "metrics_host '0.0.0.0' is not loopback: set metrics_token_file (a file holding the "
        "bearer token scrapers must send) or bind 127.0.0.1"
    )
    token = tmp_path / "token"
    token.write_text(" t0k \n")
    exposed = load_settings(
        DemoSettings, metrics_port=9000, metrics_host="0.0.0.0", metrics_token_file=token
    )
    assert exposed.metrics_token_file == token
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    assert _error(metrics_token_file=empty).endswith(f"metrics_token_file: {empty} is empty")
    missing = tmp_path / "missing"
    assert _error(metrics_token_file=missing).endswith(
        f"metrics_token_file: cannot read {missing} (No such file or directory)"
    )


def test_config_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(DemoSettings, missing)
    assert str(info.value) == f"cannot read config file {missing}: No such file or directory"
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\n")
    with pytest.raises(ConfigError, match=f"config file {bad} is not valid YAML/JSON: "):
        load_settings(DemoSettings, bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError) as info:
        load_settings(DemoSettings, listed)
    assert str(info.value) == (
        f"config file {listed} must hold a mapping of setting names to values"
    )


def test_json_files_are_read_as_json(tmp_path: Path) -> None:
    yaml_in_json = tmp_path / "c.json"
    yaml_in_json.write_text("label: yaml\n")
    with pytest.raises(ConfigError, match="is not valid YAML/JSON"):
        load_settings(DemoSettings, yaml_in_json)
    as_yaml = tmp_path / "c.yaml"
    as_yaml.write_text("label: yaml\n")
    assert load_settings(DemoSettings, as_yaml).label == "yaml"


def test_an_empty_file_is_no_settings(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_settings(DemoSettings, empty).label == "default"


def test_the_file_argument_wins_over_the_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_env, given = tmp_path / "env.yaml", tmp_path / "given.yaml"
    from_env.write_text("label: env-file\n")
    given.write_text("label: given\n")
    monkeypatch.setenv("LLMESH_DEMO_CONFIG_FILE", str(from_env))
    assert load_settings(DemoSettings, str(given)).label == "given"
    assert load_settings(DemoSettings).label == "env-file"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_settings(DemoSettings, "~/given.yaml").label == "given"


def test_file_values_do_not_leak_into_the_next_load(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("label: first\n")
    assert load_settings(DemoSettings, file).label == "first"
    assert config._file_values.get() is None
    assert load_settings(DemoSettings).label == "default"
    file.write_text("workers: 0\n")
    with pytest.raises(ConfigError):
        load_settings(DemoSettings, file)
    assert config._file_values.get() is None


def test_file_source_field_lookup() -> None:
    source = config._ConfigFileSource(DemoSettings)
    assert source.get_field_value(None, "label") == (None, "label", False)
    assert source() == {}
    token = config._file_values.set({"label": "x"})
    try:
        assert source.get_field_value(None, "label") == ("x", "label", False)
        assert source() == {"label": "x"}
    finally:
        config._file_values.reset(token)
