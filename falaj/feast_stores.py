"""Where Feast keeps its online store and its registry, read from two settings.

- ``FALAJ_ONLINE_STORE``: unset, Feast's SQLite online store at
  ``<home>/feast/online.db``; ``redis://[[user]:password@]host[:port][/db]``
  (``rediss://`` for TLS), Feast's ``redis`` online store on that server and
  database.
- ``FALAJ_FEATURE_REGISTRY``: unset, Feast's file registry at
  ``<home>/feast/registry.db``; ``postgresql://user[:password]@host[:port]/database``
  (libpq parameters such as ``?sslmode=require`` pass through), Feast's ``sql``
  registry on that database, through SQLAlchemy and psycopg 3.

Each store has a ``location`` without credentials (``redis://host:port/db``,
``postgresql://host:port/database``, or a file's path): the residency policy
checks it before Feast connects, and errors and the audit log name the store by
it. A password stays in a ``SecretStr`` until it goes into the config handed to
Feast; no error here quotes a URL, only what was wrong with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from pydantic import SecretStr

from falaj.errors import ConfigError

if TYPE_CHECKING:
    from falaj.residency import ResidencyPolicy
    from falaj.settings import Settings

_T = TypeVar("_T")
_KNOWN_SCHEMES = frozenset(
    {"http", "https", "file", "s3", "sqlite", "mysql", "amqp", "amqps", "mongodb", "kafka"}
    | {"redis", "rediss", "postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"}
)

REDIS_SCHEMES = frozenset({"redis", "rediss"})
POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})
REDIS_FORM = "redis://[[user]:password@]host[:port][/db] (rediss:// for TLS)"
POSTGRES_FORM = "postgresql://user[:password]@host[:port]/database"
#: Seconds to wait for a store's TCP connection: a host that drops packets fails
#: in seconds rather than after the operating system's connect timeout (minutes).
CONNECT_TIMEOUT_S = 5


@dataclass(frozen=True, kw_only=True)
class SqliteOnline:
    """Feast's SQLite online store, a file of the platform's home (the default)."""

    path: Path

    @property
    def location(self) -> str:
        return str(self.path)

    def feast_config(self) -> dict[str, Any]:
        return {"type": "sqlite", "path": str(self.path)}


@dataclass(frozen=True, kw_only=True)
class RedisOnline:
    """Feast's Redis online store: one server (not a cluster or sentinel), one database."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False

    @property
    def location(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}"

    def feast_config(self) -> dict[str, Any]:
        # Feast splits this string at commas and JSON-decodes each value, so the
        # user name and password go in as JSON strings: "123" stays text rather
        # than becoming a number, "null" stays a password rather than none.
        params = [
            f"{self.host}:{self.port}",
            f"db={self.db}",
            f"socket_connect_timeout={CONNECT_TIMEOUT_S}",
        ]
        if self.username is not None:
            params.append(f"username={json.dumps(self.username)}")
        if self.password is not None:
            params.append(f"password={json.dumps(self.password.get_secret_value())}")
        if self.tls:
            params.append("ssl=true")
        return {"type": "redis", "connection_string": ",".join(params)}


@dataclass(frozen=True, kw_only=True)
class FileRegistry:
    """Feast's file registry, a file of the platform's home (the default)."""

    path: Path

    @property
    def location(self) -> str:
        return str(self.path)

    def feast_config(self, *, cache_ttl_seconds: int) -> dict[str, Any]:
        return {
            "registry_type": "file",
            "path": str(self.path),
            "cache_ttl_seconds": cache_ttl_seconds,
        }


@dataclass(frozen=True, kw_only=True)
class PostgresRegistry:
    """Feast's SQL registry on PostgreSQL, through SQLAlchemy and psycopg 3."""

    host: str
    database: str
    port: int = 5432
    username: str | None = None
    password: SecretStr | None = None
    #: libpq parameters (``sslmode`` ...), passed through as given.
    query: tuple[tuple[str, str], ...] = ()

    @property
    def location(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{host}:{self.port}/{self.database}"

    def sqlalchemy_url(self) -> str:
        from sqlalchemy.engine import URL

        return URL.create(
            # Named outright: Feast would rewrite a bare postgresql:// to
            # psycopg 3 anyway, with a warning on every start.
            "postgresql+psycopg",
            username=self.username,
            password=None if self.password is None else self.password.get_secret_value(),
            host=self.host,
            port=self.port,
            database=self.database,
            query=dict(self.query),
        ).render_as_string(hide_password=False)

    def feast_config(self, *, cache_ttl_seconds: int) -> dict[str, Any]:
        return {
            "registry_type": "sql",
            "path": self.sqlalchemy_url(),
            "cache_ttl_seconds": cache_ttl_seconds,
            "sqlalchemy_config_kwargs": {
                "echo": False,
                # A long-lived function outlives a PostgreSQL restart: a pooled
                # connection is checked before use instead of failing a request.
                "pool_pre_ping": True,
                "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S},
            },
        }


@dataclass(frozen=True)
class FeastStores:
    """The online store and the registry one ``FeatureStoreClient`` uses."""

    online: SqliteOnline | RedisOnline
    registry: FileRegistry | PostgresRegistry

    @classmethod
    def of(cls, settings: Settings, feast_dir: Path) -> FeastStores:
        """The stores the settings name; files under ``feast_dir`` where they name none."""
        online: SqliteOnline | RedisOnline = SqliteOnline(path=feast_dir / "online.db")
        registry: FileRegistry | PostgresRegistry = FileRegistry(path=feast_dir / "registry.db")
        if settings.online_store is not None:
            online = _named("FALAJ_ONLINE_STORE", parse_redis_url, settings.online_store)
        if settings.feature_registry is not None:
            registry = _named(
                "FALAJ_FEATURE_REGISTRY", parse_postgres_url, settings.feature_registry
            )
        return cls(online=online, registry=registry)

    def check(self, policy: ResidencyPolicy) -> None:
        """Refuse (audited) a store outside the allowed regions; call it before Feast connects."""
        policy.check_location(self.registry.location)
        policy.check_location(self.online.location)


def parse_redis_url(url: str) -> RedisOnline:
    """A Redis online store from its URL; ``ConfigError`` naming every problem, never the URL."""
    parts, problems = _split(url, REDIS_SCHEMES)
    db = 0
    if parts is not None:
        path = parts.path.strip("/")
        if path and not (path.isascii() and path.isdigit()):
            problems.append("a database that is not a number (the path is /0, /1, ...)")
        elif path:
            db = int(path)
        if parts.query:
            problems.append("query parameters, which are not supported")
        user, password = _credentials(parts)
        if "," in (user or "") + (password or ""):
            problems.append(
                "a comma in the user name or password, which Feast's Redis connection string "
                "cannot carry"
            )
        host = parts.hostname or ""
        if ":" in host:
            problems.append(
                "an IPv6 address, which Feast's Redis connection string cannot carry "
                "(use a host name)"
            )
        elif "," in host or "=" in host:
            problems.append("a ',' or '=' in the host name")
    if problems or parts is None:
        raise ConfigError(
            f"expected {REDIS_FORM}; got {', '.join(problems)}; fix the URL (percent-encode "
            "special characters in the password), or unset it for the local SQLite online store"
        )
    return RedisOnline(
        host=parts.hostname or "",
        port=parts.port or 6379,
        db=db,
        username=user,
        password=None if password is None else SecretStr(password),
        tls=parts.scheme == "rediss",
    )


def parse_postgres_url(url: str) -> PostgresRegistry:
    """A PostgreSQL registry from its URL; ``ConfigError`` naming every problem, never the URL."""
    parts, problems = _split(url, POSTGRES_SCHEMES)
    database = ""
    if parts is not None:
        database = unquote(parts.path.lstrip("/"))
        if not database or "/" in database:
            problems.append("no database name (the path is /database)")
        if not parts.username:
            problems.append("no user name (user@host)")
    if problems or parts is None:
        raise ConfigError(
            f"expected {POSTGRES_FORM}; got {', '.join(problems)}; fix the URL (percent-encode "
            "special characters in the password), or unset it for the local file registry"
        )
    user, password = _credentials(parts)
    return PostgresRegistry(
        host=parts.hostname or "",
        port=parts.port or 5432,
        database=database,
        username=user,
        password=None if password is None else SecretStr(password),
        query=tuple(parse_qsl(parts.query, keep_blank_values=True)),
    )


def _split(url: str, schemes: frozenset[str]) -> tuple[SplitResult | None, list[str]]:
    """The URL's parts and what is wrong with them; parts None when it is no URL of ``schemes``."""
    if "://" not in url:
        return None, ["a value that is not a URL (no '://')"]
    scheme = url.split("://", 1)[0].lower()
    if scheme not in schemes:
        # Only a well-known scheme is quoted back: whatever else stands before
        # "://" may be a misplaced credential.
        shown = f" {scheme!r}" if scheme in _KNOWN_SCHEMES else ""
        return None, [f"another scheme{shown}"]
    try:
        parts = urlsplit(url)
    except ValueError:
        return None, ["a URL that cannot be parsed (a bracket out of place?)"]
    problems: list[str] = []
    if not parts.hostname:
        problems.append("no host")
    if parts.fragment:
        problems.append("a '#' fragment (percent-encode a '#' in the password as %23)")
    try:
        port = parts.port
    except ValueError:
        problems.append("a port that is not a number from 1 to 65535")
    else:
        if port == 0:
            problems.append("a port that is not a number from 1 to 65535")
    return parts, problems


def _credentials(parts: SplitResult) -> tuple[str | None, str | None]:
    """User name and password, percent-decoded; an empty user name is none (redis://:pw@h)."""
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return user, password


def _named(setting: str, parse: Callable[[str], _T], value: SecretStr) -> _T:
    """Parse a setting's URL; an error names the setting (never its value)."""
    try:
        return parse(value.get_secret_value())
    except ConfigError as exc:
        raise ConfigError(f"{setting}: {exc}") from None
