"""Where Feast keeps its stores: URLs parsed, configs built, residency checked; no server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from falaj.audit import AuditLog
from falaj.context import Context
from falaj.errors import ConfigError, ResidencyViolation
from falaj.feast_stores import (
    FeastStores,
    FileRegistry,
    PostgresRegistry,
    RedisOnline,
    SqliteOnline,
    parse_postgres_url,
    parse_redis_url,
)
from falaj.features import FeatureStoreClient
from falaj.schema import FeatureSchema, load_schema
from falaj.settings import Settings

SECRET = "s3cr3t-Pa55"


@pytest.fixture(scope="module")
def schema() -> FeatureSchema:
    return load_schema(Settings())


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port that takes connections without anyone accepting them: a store that was reached."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def was_reached(listener: socket.socket) -> bool:
    # The kernel completes a client's handshake into the backlog before connect()
    # returns, so a connection made before this call is there to accept.
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


# -- Redis ---------------------------------------------------------------------


def test_a_redis_url_becomes_feasts_connection_string() -> None:
    store = parse_redis_url(f"redis://falaj:{SECRET.replace('5', '%35')}@cache.internal:6380/3")
    assert store == RedisOnline(
        host="cache.internal", port=6380, db=3, username="falaj", password=SecretStr(SECRET)
    )
    assert store.location == "redis://cache.internal:6380/3"
    assert SECRET not in repr(store)
    from feast.infra.online_stores.redis import RedisOnlineStore

    config = store.feast_config()
    assert config["type"] == "redis"
    # Read back by Feast's own parser, as its client will be built.
    nodes, params = RedisOnlineStore._parse_connection_string(config["connection_string"])
    assert nodes == [{"host": "cache.internal", "port": "6380"}]
    assert params["db"] == 3
    assert (params["username"], params["password"]) == ("falaj", SECRET)
    assert params["socket_connect_timeout"] == 5


@pytest.mark.parametrize(
    ("url", "password", "tls", "db"),
    [
        ("redis://cache", None, False, 0),
        ("redis://:123@cache/1", "123", False, 1),  # Feast would have made it the number 123
        ("rediss://:null@cache:6379/", "null", True, 0),  # ... and this no password at all
        ("redis://:p%40ss%3Dword@cache", "p@ss=word", False, 0),
    ],
)
def test_redis_passwords_reach_feast_as_they_were_written(
    url: str, password: str | None, tls: bool, db: int
) -> None:
    from feast.infra.online_stores.redis import RedisOnlineStore

    store = parse_redis_url(url)
    assert (store.host, store.port, store.db, store.tls, store.username) == (
        "cache",
        6379,
        db,
        tls,
        None,
    )
    _, params = RedisOnlineStore._parse_connection_string(store.feast_config()["connection_string"])
    assert params.get("password") == password
    assert params.get("ssl", False) is tls


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"http://:{SECRET}@cache:6379/0", "got another scheme 'http'"),
        (f":{SECRET}@cache:6379", "got a value that is not a URL"),
        (f"redis://:{SECRET}@:6379/0", "no host"),
        (f"redis://:{SECRET}@cache:port/0", "a port that is not a number"),
        (f"redis://:{SECRET}@cache:6379/zero", "a database that is not a number"),
        (f"redis://:{SECRET}@cache:6379/0?ssl_cert_reqs=none", "query parameters"),
        (f"redis://:{SECRET}%2C@cache:6379/0", "a comma in the user name or password"),
        (f"redis://:{SECRET}@[::1]:6379/0", "an IPv6 address"),
        (f"redis://:{SECRET}#@cache:6379/0", "a '#' fragment"),
        (f"{SECRET}://cache", "got another scheme;"),  # not a known scheme: never quoted
        (f"postgresql+psycopg://u:{SECRET}@cache", "another scheme 'postgresql+psycopg'"),
    ],
)
def test_a_bad_redis_url_is_explained_without_its_password(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_redis_url(url)
    message = str(refused.value)
    assert message.startswith("expected redis://[[user]:password@]host[:port][/db]")
    assert problem in message
    assert "unset it for the local SQLite online store" in message
    assert SECRET.lower() not in message.lower()


def test_every_problem_of_a_redis_url_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_redis_url(f"redis://:{SECRET}@cache:nope/zero?x=1")
    message = str(refused.value)
    for problem in ("a port", "a database", "query parameters"):
        assert problem in message


# -- PostgreSQL ----------------------------------------------------------------


def test_a_postgres_url_becomes_a_sqlalchemy_url_for_psycopg() -> None:
    from sqlalchemy.engine import make_url

    store = parse_postgres_url(
        f"postgresql://feast:{SECRET.replace('-', '%2D')}@pg.internal/feature_registry"
        "?sslmode=require"
    )
    assert store.location == "postgresql://pg.internal:5432/feature_registry"
    assert SECRET not in repr(store)
    config = store.feast_config(cache_ttl_seconds=5)
    assert config["registry_type"] == "sql"
    assert config["cache_ttl_seconds"] == 5
    assert config["sqlalchemy_config_kwargs"]["connect_args"] == {"connect_timeout": 5}
    url = make_url(config["path"])
    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "feast",
        SECRET,
        "pg.internal",
        5432,
        "feature_registry",
    )
    assert dict(url.query) == {"sslmode": "require"}


def test_a_password_with_url_characters_survives_the_sqlalchemy_url() -> None:
    from sqlalchemy.engine import make_url

    store = parse_postgres_url("postgres://feast:a%40b%2Fc%3Ad@pg:6432/registry")
    assert store == PostgresRegistry(
        host="pg", port=6432, database="registry", username="feast", password=SecretStr("a@b/c:d")
    )
    assert make_url(store.sqlalchemy_url()).password == "a@b/c:d"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"mysql://feast:{SECRET}@db/registry", "another scheme 'mysql'"),
        (f"postgresql://feast:{SECRET}@db", "no database name"),
        (f"postgresql://feast:{SECRET}@db/a/b", "no database name"),
        (f"postgresql://:{SECRET}@db/registry", "no user name"),
        (f"postgresql://feast:{SECRET}@db:99999/registry", "a port that is not a number"),
        (f"postgresql://feast:{SECRET}@/registry", "no host"),
    ],
)
def test_a_bad_postgres_url_is_explained_without_its_password(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_postgres_url(url)
    message = str(refused.value)
    assert message.startswith("expected postgresql://user[:password]@host[:port]/database")
    assert problem in message
    assert "unset it for the local file registry" in message
    assert SECRET not in message


# -- the stores of a client ------------------------------------------------------


def test_unset_the_stores_are_files_of_the_home(tmp_path: Path) -> None:
    stores = FeastStores.of(Settings(home=tmp_path), tmp_path / "feast")
    assert stores == FeastStores(
        online=SqliteOnline(path=tmp_path / "feast" / "online.db"),
        registry=FileRegistry(path=tmp_path / "feast" / "registry.db"),
    )


def test_the_client_hands_feast_the_configured_stores(
    tmp_path: Path, schema: FeatureSchema, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    settings = Settings(
        home=tmp_path / ".falaj",
        online_store=f"redis://:{SECRET}@127.0.0.1:{port}/4",  # type: ignore[arg-type]
        feature_registry=f"postgresql://feast:{SECRET}@127.0.0.1:{port}/registry",  # type: ignore[arg-type]
    )
    client = FeatureStoreClient(Context.create(settings, actor="test"), schema)
    config = client.store.config
    assert type(config.online_store).__name__ == "RedisOnlineStoreConfig"
    assert config.online_store.connection_string.startswith(f"127.0.0.1:{port},db=4,")
    assert type(config.registry).__name__ == "SqlRegistryConfig"
    assert config.registry.path.startswith("postgresql+psycopg://feast:")
    assert config.registry.cache_ttl_seconds == 5
    # Feast connects to either store only when it is used, not when configured.
    assert not was_reached(listener)


def test_a_store_declared_abroad_is_refused_before_it_is_reached(
    tmp_path: Path, schema: FeatureSchema, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    for setting, url, location in (
        (
            "online_store",
            f"redis://falaj:{SECRET}@127.0.0.1:{port}/2",
            f"redis://127.0.0.1:{port}/2",
        ),
        (
            "feature_registry",
            f"postgresql://feast:{SECRET}@127.0.0.1:{port}/registry",
            f"postgresql://127.0.0.1:{port}/registry",
        ),
    ):
        home = tmp_path / setting / ".falaj"
        settings = Settings(
            home=home,
            # A declared region wins over "a loopback server is this machine".
            storage_regions={f"{location.split('/')[0]}//127.0.0.1:{port}": "eu-west-1"},
            **{setting: url},  # type: ignore[arg-type]
        )
        client = FeatureStoreClient(Context.create(settings, actor="test"), schema)
        with pytest.raises(ResidencyViolation) as refused:
            client.apply()
        message = str(refused.value)
        assert location in message and "eu-west-1" in message
        assert SECRET not in message
        assert not was_reached(listener)
        assert not (home / "feast").exists() and not (home / "offline").exists()
        [entry] = list(AuditLog(home / "audit").entries())
        assert (entry["action"], entry["resource"], entry["region"]) == (
            "policy.refused",
            location,
            "eu-west-1",
        )
        assert entry["details"]["boundary"] == "storage-write"
        audit_text = "".join(p.read_text() for p in (home / "audit").iterdir() if p.is_file())
        assert SECRET not in audit_text


def test_a_remote_store_nobody_declared_is_refused_and_one_declared_in_region_is_used(
    tmp_path: Path, schema: FeatureSchema
) -> None:
    url = f"redis://:{SECRET}@cache.bank.internal:6379/0"
    undeclared = Settings(home=tmp_path / "a", online_store=url)  # type: ignore[arg-type]
    client = FeatureStoreClient(Context.create(undeclared, actor="test"), schema)
    with pytest.raises(ResidencyViolation, match="no known region; declare it in") as refused:
        client.store  # noqa: B018 - building the store is the boundary
    assert "redis://cache.bank.internal:6379/0" in str(refused.value)
    declared = Settings(
        home=tmp_path / "b",
        online_store=url,  # type: ignore[arg-type]
        # Declared without a port: every port of the host.
        storage_regions={"redis://cache.bank.internal": "me-central-1"},
    )
    client = FeatureStoreClient(Context.create(declared, actor="test"), schema)
    assert client.store.config.online_store.connection_string.startswith("cache.bank.internal:")


def test_a_home_abroad_gets_no_feast_file_nor_offline_folder(
    tmp_path: Path, schema: FeatureSchema
) -> None:
    home = tmp_path / ".falaj"
    client = FeatureStoreClient(
        Context.create(Settings(home=home, region="eu-west-1"), actor="test"), schema
    )
    with pytest.raises(ResidencyViolation, match="eu-west-1"):
        client.apply()
    assert not (home / "feast").exists() and not (home / "offline").exists()
    [entry] = list(AuditLog(home / "audit").entries())
    assert entry["resource"] == str(home.resolve() / "feast" / "registry.db")
