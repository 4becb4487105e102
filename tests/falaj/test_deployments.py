"""The deployment store: traffic splits by model, and the change marker the router polls."""

from __future__ import annotations

import sqlite3

import pytest

from falaj.context import Context
from falaj.deployments import DB_FILE, DeploymentStore, TrafficSplit
from falaj.errors import ConfigError


def test_set_get_all_and_generation(ctx: Context) -> None:
    store = DeploymentStore(ctx)
    assert store.get("fraud") is None
    assert store.all() == []
    before = store.generation()

    store.set(TrafficSplit(model="fraud", stable_version=1, updated="t1"))
    assert store.get("fraud") == TrafficSplit("fraud", 1, None, 0, "t1")
    after_first = store.generation()
    assert after_first != before

    canary = TrafficSplit(
        model="fraud", stable_version=1, canary_version=2, canary_percent=10, updated="t2"
    )
    store.set(canary)
    store.set(TrafficSplit(model="aml", stable_version=3, updated="t3"))
    assert store.get("fraud") == canary
    assert canary.versions == (1, 2)
    assert [s.model for s in store.all()] == ["aml", "fraud"]
    assert store.generation() not in (before, after_first)


def test_another_process_view_sees_changes(ctx: Context) -> None:
    """The router opens its own store; a write by the rollout function shows up there."""
    writer, reader = DeploymentStore(ctx), DeploymentStore(ctx)
    seen = reader.generation()
    writer.set(TrafficSplit(model="fraud", stable_version=4, updated="t"))
    assert reader.generation() != seen
    split = reader.get("fraud")
    assert split is not None and split.stable_version == 4
    writer.close()
    reader.close()


def test_split_updated_defaults_to_now(ctx: Context) -> None:
    with DeploymentStore(ctx) as store:
        store.set(TrafficSplit(model="fraud", stable_version=1))
        split = store.get("fraud")
    assert split is not None and split.updated.startswith("20")


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"stable_version": 0}, "stable_version: expected >= 1"),
        ({"stable_version": 2, "canary_version": 2, "canary_percent": 5}, "other than the stable"),
        ({"stable_version": 1, "canary_version": 2, "canary_percent": 101}, "expected 0..100"),
        ({"stable_version": 1, "canary_percent": 10}, "expected 0 without a canary"),
    ],
)
def test_invalid_split_is_refused(kwargs: dict[str, int], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        TrafficSplit(model="fraud", **kwargs)  # type: ignore[arg-type]


def test_a_shadow_is_stored_runs_but_does_not_serve(ctx: Context) -> None:
    split = TrafficSplit(
        "fraud", stable_version=1, canary_version=2, canary_percent=10, shadow_version=3
    )
    assert split.versions == (1, 2)
    assert split.running_versions == (1, 2, 3)
    with DeploymentStore(ctx) as store:
        store.set(split)
        stored = store.get("fraud")
    assert stored is not None
    assert (stored.versions, stored.shadow_version) == ((1, 2), 3)
    with pytest.raises(ConfigError, match="shadow_version: expected a version that does not serve"):
        TrafficSplit("fraud", stable_version=1, shadow_version=1)


def test_a_store_from_before_shadows_keeps_its_splits(ctx: Context) -> None:
    ctx.paths.serving.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(ctx.paths.serving / DB_FILE) as old:
        old.execute(
            "CREATE TABLE splits (model TEXT PRIMARY KEY, stable_version INTEGER NOT NULL,"
            " canary_version INTEGER, canary_percent INTEGER NOT NULL, updated TEXT NOT NULL)"
        )
        old.execute("INSERT INTO splits VALUES ('fraud', 1, 2, 10, '2026-01-01')")
    old.close()
    with DeploymentStore(ctx) as store:
        assert store.get("fraud") == TrafficSplit("fraud", 1, 2, 10, "2026-01-01")
