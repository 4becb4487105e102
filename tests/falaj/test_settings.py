from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from falaj.errors import ConfigError
from falaj.settings import UAE_REGIONS, Settings, write_secrets_file


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


def test_the_rabbitmq_url_is_a_secret_like_the_token() -> None:
    url = "amqp://falaj:s3cr3t@rabbit.internal:5672/records"
    settings = Settings.from_env({"FALAJ_RABBITMQ_URL": url})
    assert settings.rabbitmq_url is not None
    assert settings.rabbitmq_url.get_secret_value() == url
    assert "s3cr3t" not in repr(settings)
    assert Settings.from_env(settings.to_env()).rabbitmq_url == settings.rabbitmq_url
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"FALAJ_RABBITMQ_URL": url, "FALAJ_BROKER_PORT": "x"})
    assert "s3cr3t" not in str(error.value)
    # Even a value of the wrong type is named, never shown.
    with pytest.raises(ConfigError, match="FALAJ_RABBITMQ_URL: Input should be") as wrong:
        Settings.from_env({}, rabbitmq_url=987654321)
    assert "987654321" not in str(wrong.value)


def test_the_feast_store_urls_are_secrets_like_the_token() -> None:
    redis_url = "redis://falaj:r3d1s-s3cr3t@cache.internal:6379/2"
    postgres_url = "postgresql://feast:pg-s3cr3t@pg.internal:5432/registry"
    settings = Settings.from_env(
        {"FALAJ_ONLINE_STORE": redis_url, "FALAJ_FEATURE_REGISTRY": postgres_url}
    )
    assert settings.online_store is not None and settings.feature_registry is not None
    assert settings.online_store.get_secret_value() == redis_url
    assert settings.feature_registry.get_secret_value() == postgres_url
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in str(settings.model_dump())
    rebuilt = Settings.from_env(settings.to_env())
    assert (rebuilt.online_store, rebuilt.feature_registry) == (
        settings.online_store,
        settings.feature_registry,
    )
    with pytest.raises(ConfigError) as error:
        Settings.from_env(
            {
                "FALAJ_ONLINE_STORE": redis_url,
                "FALAJ_FEATURE_REGISTRY": postgres_url,
                "FALAJ_BROKER_PORT": "x",
            }
        )
    assert "s3cr3t" not in str(error.value)


def test_unset_feast_stores_are_the_local_files() -> None:
    settings = Settings.from_env({})
    assert (settings.online_store, settings.feature_registry) == (None, None)


def test_a_malformed_store_url_says_what_was_expected_and_hides_the_password() -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env(
            {
                "FALAJ_ONLINE_STORE": "http://:s3cr3t@cache:6379/0",
                "FALAJ_FEATURE_REGISTRY": "postgresql://feast:s3cr3t@pg:5432",
            }
        )
    message = str(error.value)
    # Both problems at once, each under its variable, with what to do about it.
    assert "FALAJ_ONLINE_STORE: Value error, expected redis://" in message
    assert "got another scheme 'http'" in message
    assert "FALAJ_FEATURE_REGISTRY: Value error, expected postgresql://" in message
    assert "got no database name" in message
    assert "unset it" in message
    assert "s3cr3t" not in message


def test_settings_built_in_code_hide_a_bad_secret_too() -> None:
    # A ValidationError's own text quotes inputs; the settings hide them.
    with pytest.raises(ValidationError) as error:
        Settings(online_store="redis://:s3cr3t@cache:port/0")  # type: ignore[arg-type]
    assert "a port that is not a number" in str(error.value)
    assert "s3cr3t" not in str(error.value)


def test_secret_settings_come_from_a_secrets_file_the_owner_alone_reads(tmp_path: Path) -> None:
    given = Settings(
        online_store=SecretStr("redis://:r3dis@cache:6379/2"),
        feature_registry=SecretStr("postgresql://feast:pg5ecret@db:5432/registry"),
        rabbitmq_url=SecretStr("amqp://falaj:s3cr3t@rabbit:5672/"),
    )
    path = tmp_path / "keys" / "job.secrets"
    assert write_secrets_file(path, given, ("online_store", "feature_registry"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "s3cr3t" not in path.read_text()  # only the names asked for

    rebuilt = Settings.from_env({"FALAJ_SECRETS_FILE": str(path)})
    assert rebuilt.online_store == given.online_store
    assert rebuilt.feature_registry == given.feature_registry
    assert rebuilt.rabbitmq_url is None
    # A setting given directly wins over the file.
    direct = Settings.from_env(
        {"FALAJ_SECRETS_FILE": str(path), "FALAJ_ONLINE_STORE": "redis://cache:6379/5"}
    )
    assert direct.online_store is not None
    assert direct.online_store.get_secret_value() == "redis://cache:6379/5"
    assert direct.feature_registry == given.feature_registry


def test_nothing_to_hide_writes_no_secrets_file(tmp_path: Path) -> None:
    path = tmp_path / "job.secrets"
    assert not write_secrets_file(path, Settings(), ("online_store", "feature_registry"))
    assert not path.exists()


def test_a_bad_secrets_file_names_its_line_never_its_value(tmp_path: Path) -> None:
    path = tmp_path / "job.secrets"
    path.write_text("# the stores\nFALAJ_ONLINE_STORE=redis://:r3dis@cache\nFALAJ_HOME=/tmp/x\n")
    with pytest.raises(ConfigError, match=r"line 3: expected FALAJ_<NAME>=value") as raised:
        Settings.from_env({"FALAJ_SECRETS_FILE": str(path)})
    assert "FALAJ_HOME" in str(raised.value) and "r3dis" not in str(raised.value)
    path.write_text("redis://:r3dis@cache\n")
    with pytest.raises(ConfigError, match=r"line 1: .*got no '='") as raised:
        Settings.from_env({"FALAJ_SECRETS_FILE": str(path)})
    assert "r3dis" not in str(raised.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        Settings.from_env({"FALAJ_SECRETS_FILE": str(tmp_path / "absent")})


def test_the_code_commit_an_image_was_built_from_is_a_setting() -> None:
    """FALAJ_CODE_COMMIT (training/lineage.py) is known: a build argument never stops a process."""
    assert Settings.from_env({"FALAJ_CODE_COMMIT": "0a8a66a"}).code_commit == "0a8a66a"
