from __future__ import annotations

from pathlib import Path

import pytest

from falaj.errors import ConfigError
from falaj.settings import UAE_REGIONS, Settings


def test_defaults_keep_data_in_the_uae() -> None:
    settings = Settings.from_env({})
    assert settings.allowed_regions == UAE_REGIONS
    assert settings.region in settings.allowed_regions
    assert settings.broker_ingress == "http://127.0.0.1:8080"
    assert settings.router_port == 8081


def test_env_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "FALAJ_ALLOWED_REGIONS": "me-central-1, uaenorth",
            "FALAJ_BROKER_PORT": "9000",
            "FALAJ_STORAGE_REGIONS": "s3://a=me-central-1,s3://b=eu-west-1",
            "PATH": "/usr/bin",
        }
    )
    assert settings.allowed_regions == ("me-central-1", "uaenorth")
    assert settings.broker_port == 9000
    assert settings.storage_regions == {"s3://a": "me-central-1", "s3://b": "eu-west-1"}


def test_unknown_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="FALAJ_BROKR_PORT is not a Falaj setting"):
        Settings.from_env({"FALAJ_BROKR_PORT": "1"})


def test_bad_value_names_key_and_value() -> None:
    with pytest.raises(ConfigError, match=r"FALAJ_BROKER_PORT.*'eighty'"):
        Settings.from_env({"FALAJ_BROKER_PORT": "eighty"})


def test_token_never_appears_in_errors() -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"FALAJ_TOKEN": "s3cr3t", "FALAJ_BROKER_PORT": "x"})
    assert "s3cr3t" not in str(error.value)
    assert "s3cr3t" not in repr(Settings(token="s3cr3t"))  # type: ignore[arg-type]


def test_to_env_roundtrips(tmp_path: Path) -> None:
    original = Settings(home=tmp_path, allowed_regions=("uaenorth",), region="uaenorth")
    rebuilt = Settings.from_env(original.to_env())
    assert rebuilt.allowed_regions == ("uaenorth",)
    assert rebuilt.home == tmp_path.resolve()


def test_token_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("abc\n")
    assert Settings(token_file=tmp_path / "t").bearer_token() == "abc"
    with pytest.raises(ConfigError, match="cannot be read"):
        Settings(token_file=tmp_path / "missing").bearer_token()
