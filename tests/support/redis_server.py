"""The real Redis on 127.0.0.1:6379, as the integration tests use it: a database and a user per run.

A run claims a numbered database that is empty (``SET NX`` of a claim key, then
``DBSIZE`` must be 1), so it never mixes keys with another run or with data
already there, and flushes only that database at the end. Its ACL user has a
password of its own, so a test proves the password reached Redis (or no command
would be allowed) and can look for it in what was logged.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import cast

import redis
import redis.exceptions

HOST = "127.0.0.1"
PORT = 6379
CLAIM = "falaj-test:claim"


class RedisDatabase:
    """One claimed database and one ACL user; ``close`` flushes the one and deletes the other."""

    def __init__(self, run: str) -> None:
        self.admin = redis.Redis(host=HOST, port=PORT)
        self.username = f"falaj-test-{run}"
        self.password = f"redis-pw-{secrets.token_hex(12)}"
        self.db = self._claim(run)
        self.admin.acl_setuser(
            self.username,
            enabled=True,
            passwords=[f"+{self.password}"],
            keys=["*"],
            commands=["+@all"],
        )
        self.client = redis.Redis(host=HOST, port=PORT, db=self.db)

    @property
    def url(self) -> str:
        return f"redis://{self.username}:{self.password}@{HOST}:{PORT}/{self.db}"

    def keys(self) -> int:
        """How many keys this run wrote (the claim not counted)."""
        return cast(int, self.client.dbsize()) - 1

    def close(self) -> None:
        with contextlib.suppress(redis.exceptions.RedisError):
            self.client.flushdb()
        with contextlib.suppress(redis.exceptions.RedisError):
            self.admin.acl_deluser(self.username)
        self.client.close()
        self.admin.close()

    def _claim(self, run: str) -> int:
        # redis-py's types cover its async client too; this one is synchronous.
        config = cast(dict[str, str], self.admin.config_get("databases"))
        databases = int(config.get("databases", 16))
        # Database 0 is where anything else on the machine writes by default.
        for db in range(1, databases):
            candidate = redis.Redis(host=HOST, port=PORT, db=db)
            try:
                if candidate.set(CLAIM, run, nx=True):
                    if cast(int, candidate.dbsize()) == 1:
                        return db
                    candidate.delete(CLAIM)  # someone's data is there: leave it alone
            finally:
                candidate.close()
        raise RuntimeError(f"no empty Redis database among 1..{databases - 1} to claim")


def reachable() -> str | None:
    """None when a Redis answers at HOST:PORT; else why not, in a few words."""
    client = redis.Redis(host=HOST, port=PORT, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None
