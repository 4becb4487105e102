"""The real PostgreSQL on 127.0.0.1:5432, as the integration tests use it: a database per run.

The development machines trust local connections (user ``postgres``), so the
password a test puts in its URL is sent nowhere that checks it; it is there so
the test can look for it in what was logged. The database is dropped at the
end with ``FORCE``, which closes the connections Feast's pool still holds.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

HOST = "127.0.0.1"
PORT = 5432
ADMIN_USER = "postgres"
ADMIN_DATABASE = "postgres"


class PostgresDatabase:
    """A database of one test run's own; ``close`` drops it."""

    def __init__(self, run: str, *, password: str) -> None:
        self.name = f"falaj_test_{run}"
        self.password = password
        with _admin() as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))

    @property
    def url(self) -> str:
        return f"postgresql://{ADMIN_USER}:{self.password}@{HOST}:{PORT}/{self.name}"

    def tables(self) -> set[str]:
        """The tables in the database's public schema."""
        with psycopg.connect(
            host=HOST, port=PORT, user=ADMIN_USER, dbname=self.name, connect_timeout=5
        ) as conn:
            rows = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        return {row[0] for row in rows}

    def close(self) -> None:
        with _admin() as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    # CREATE and DROP DATABASE cannot run inside a transaction.
    return psycopg.connect(
        host=HOST,
        port=PORT,
        user=ADMIN_USER,
        dbname=ADMIN_DATABASE,
        autocommit=True,
        connect_timeout=5,
    )


def reachable() -> str | None:
    """None when PostgreSQL answers at HOST:PORT as ``postgres``; else why not, in a few words."""
    try:
        _admin().close()
    except psycopg.Error as exc:
        return f"{type(exc).__name__}: {str(exc).strip()}"
    return None
