"""The deployment store: traffic splits by model, and the change marker the router polls."""

from __future__ import annotations

import pytest

from falaj.context import Context
from falaj.deployments import DeploymentStore, TrafficSplit
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
