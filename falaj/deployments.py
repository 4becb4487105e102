"""The traffic state of every served model: the local InferenceService.

On a cluster the rollout function edits an InferenceService (the stable model
version, and a canary version with ``canaryTrafficPercent``); locally it writes
the same facts here, and the inference router reconciles its predictor
processes from them. One SQLite file (WAL) under ``<home>/serving`` is shared by
the writer and the router; a generation counter bumped in the same transaction
as every change lets the router notice an update with one cheap read.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from falaj.closeable import Closeable
from falaj.context import Context
from falaj.errors import ConfigError

DB_FILE = "deployments.db"


class Alias(StrEnum):
    """The registry's names for what a version is to traffic.

    They are read from the traffic split, the one place that decides them, so
    an alias can never point at a version that does not serve.
    """

    PRODUCTION = "production"
    CANARY = "canary"


@dataclass(frozen=True)
class TrafficSplit:
    """Which model versions serve ``model``, and the share the canary version gets."""

    model: str
    stable_version: int
    canary_version: int | None = None
    canary_percent: int = 0
    updated: str = ""
    #: A candidate that gets a copy of every request (mirroring); its answers
    #: are logged and never returned to a caller.
    shadow_version: int | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.stable_version < 1:
            problems.append(f"stable_version: expected >= 1, got {self.stable_version}")
        if self.canary_version is not None and self.canary_version == self.stable_version:
            problems.append(
                f"canary_version: expected a version other than the stable "
                f"{self.stable_version}, got the same"
            )
        if not 0 <= self.canary_percent <= 100:
            problems.append(f"canary_percent: expected 0..100, got {self.canary_percent}")
        if self.canary_version is None and self.canary_percent != 0:
            problems.append(
                f"canary_percent: expected 0 without a canary version, got {self.canary_percent}"
            )
        if self.shadow_version is not None and self.shadow_version in self.versions:
            problems.append(
                f"shadow_version: expected a version that does not serve already "
                f"({list(self.versions)}), got {self.shadow_version}"
            )
        if problems:
            raise ConfigError(f"invalid traffic split of {self.model!r}: " + "; ".join(problems))

    def traffic(self) -> dict[str, object]:
        """Who gets what share, as JSON: the versions, the canary's percent, the shadow."""
        return {
            "stable_version": self.stable_version,
            "canary_version": self.canary_version,
            "canary_percent": self.canary_percent,
            "shadow_version": self.shadow_version,
        }

    @property
    def aliases(self) -> dict[Alias, int]:
        """production: the stable version; canary: the canary version, while there is one."""
        found = {Alias.PRODUCTION: self.stable_version}
        if self.canary_version is not None:
            found[Alias.CANARY] = self.canary_version
        return found

    @property
    def versions(self) -> tuple[int, ...]:
        """The model versions this split serves, stable first."""
        if self.canary_version is None:
            return (self.stable_version,)
        return (self.stable_version, self.canary_version)

    @property
    def running_versions(self) -> tuple[int, ...]:
        """The versions that need a model server: those that serve, and the shadow."""
        shadow = () if self.shadow_version is None else (self.shadow_version,)
        return (*self.versions, *shadow)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class TrafficStore(Protocol):
    """Where rollout steps write the split: this store, or a cluster's InferenceServices."""

    def get(self, model: str) -> TrafficSplit | None: ...

    def set(self, split: TrafficSplit) -> None: ...

    def close(self) -> None: ...


def open_traffic_store(ctx: Context, *, service_account: str = "rollout") -> TrafficStore:
    """The store ``FALAJ_SERVING_BACKEND`` names: local (this one) or kserve (the cluster's).

    ``service_account``: the ServiceAccount the pod runs as (rbac.yaml), named in errors.
    """
    if ctx.settings.serving_backend == "kserve":
        from falaj.inference_services import InferenceServiceTraffic
        from falaj.kubernetes_api import in_cluster_api_client

        return InferenceServiceTraffic(
            in_cluster_api_client(service_account), namespace=ctx.settings.cluster_namespace
        )
    return DeploymentStore(ctx)


class DeploymentStore(Closeable):
    """Traffic splits by model, in ``<home>/serving/deployments.db``."""

    def __init__(self, ctx: Context) -> None:
        directory = ctx.paths.serving
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_FILE
        # Autocommit; every write is its own explicit transaction below. The
        # router reads from another thread than the one that opened the store.
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=10.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS splits ("
            " model TEXT PRIMARY KEY, stable_version INTEGER NOT NULL,"
            " canary_version INTEGER, canary_percent INTEGER NOT NULL, updated TEXT NOT NULL)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(splits)")}
        if "shadow_version" not in columns:  # a store from before shadows
            self._db.execute("ALTER TABLE splits ADD COLUMN shadow_version INTEGER")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS generation (id INTEGER PRIMARY KEY CHECK (id = 0),"
            " value INTEGER NOT NULL)"
        )
        self._db.execute("INSERT OR IGNORE INTO generation VALUES (0, 0)")

    def get(self, model: str) -> TrafficSplit | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM splits WHERE model = ?",
            (model,),
        ).fetchone()
        return _split(row) if row else None

    def all(self) -> list[TrafficSplit]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM splits ORDER BY model").fetchall()
        return [_split(row) for row in rows]

    def set(self, split: TrafficSplit) -> None:
        """Replace the split of ``split.model`` and bump the generation, atomically."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                f"INSERT OR REPLACE INTO splits ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    split.model,
                    split.stable_version,
                    split.canary_version,
                    split.canary_percent,
                    split.updated or now_iso(),
                    split.shadow_version,
                ),
            )
            self._db.execute("UPDATE generation SET value = value + 1 WHERE id = 0")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def generation(self) -> int:
        """A number that changes whenever any split changes (cheap to poll)."""
        row = self._db.execute("SELECT value FROM generation WHERE id = 0").fetchone()
        return int(row[0])

    def close(self) -> None:
        self._db.close()


_COLUMNS = "model, stable_version, canary_version, canary_percent, updated, shadow_version"


def _split(row: tuple[str, int, int | None, int, str, int | None]) -> TrafficSplit:
    model, stable, canary, percent, updated, shadow = row
    return TrafficSplit(
        model=model,
        stable_version=int(stable),
        canary_version=None if canary is None else int(canary),
        canary_percent=int(percent),
        updated=updated,
        shadow_version=None if shadow is None else int(shadow),
    )
