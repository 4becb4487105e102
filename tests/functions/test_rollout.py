"""The rollout function: first version stable, later ones canary, residency enforced."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from onnx import TensorProto, helper

from falaj.context import Context
from falaj.deployments import DeploymentStore, TrafficSplit
from falaj.errors import ResidencyViolation
from falaj.events import (
    EventData,
    EventType,
    ModelDeployed,
    ModelRegistered,
    ParsedEvent,
    make_event,
    parse_event,
)
from falaj.profile import ReferenceProfile
from falaj.registry import ModelRegistry
from falaj.settings import UAE_REGIONS, Settings
from functions.rollout.function import RolloutFunction
from functions.rollout.split import split_for_new_version

FEATURES = ("amount", "hour")


def tiny_onnx() -> bytes:
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1], [0.5, -0.25])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["probability"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 1])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def register(ctx: Context) -> ModelRegistered:
    rng = np.random.default_rng(0)
    entry = ModelRegistry(ctx).register(
        "fraud",
        onnx_bytes=tiny_onnx(),
        profile=ReferenceProfile.from_columns({"amount": rng.normal(size=200)}),
        metrics={"auc": 0.9},
        lineage={"training_job_id": "job"},
        feature_names=FEATURES,
    )
    return ModelRegistered(
        model=entry.model,
        version=entry.version,
        digest=entry.digest,
        metrics=dict(entry.metrics),
        location=entry.location,
    )


def registered_event(ctx: Context, data: ModelRegistered) -> ParsedEvent:
    event = make_event(EventType.MODEL_REGISTERED, data, region=ctx.settings.region)
    return parse_event(event, ctx.policy)


class CapturingRollout(RolloutFunction):
    """The real function, with what it emits kept instead of sent to a broker."""

    def __init__(self) -> None:
        super().__init__()
        self.emitted: list[tuple[EventType, EventData]] = []

    def emit(self, event_type: EventType, data: EventData, *, subject: str | None = None) -> None:
        self.emitted.append((event_type, data))


@pytest.fixture
def rollout(ctx: Context) -> Iterator[CapturingRollout]:
    function = CapturingRollout()
    function.start(ctx)
    yield function
    function.stop()


# -- the split policy -------------------------------------------------------------------


def test_first_version_is_stable_at_full_traffic() -> None:
    split = split_for_new_version(None, model="fraud", version=1, canary_percent=10, updated="t")
    assert split == TrafficSplit("fraud", 1, None, 0, "t")


def test_later_version_is_a_canary_beside_stable_and_replaces_an_old_canary() -> None:
    stable = TrafficSplit("fraud", 1, updated="t0")
    split = split_for_new_version(stable, model="fraud", version=2, canary_percent=10, updated="t")
    assert split == TrafficSplit("fraud", 1, 2, 10, "t")
    newer = split_for_new_version(split, model="fraud", version=3, canary_percent=25, updated="u")
    assert newer == TrafficSplit("fraud", 1, 3, 25, "u")


@pytest.mark.parametrize("version", [1, 2, 3])
def test_served_or_older_version_changes_nothing(version: int) -> None:
    current = TrafficSplit("fraud", 2, 3, 10, "t")
    assert (
        split_for_new_version(
            current, model="fraud", version=version, canary_percent=10, updated="u"
        )
        is None
    )


# -- the function -------------------------------------------------------------------------


def test_first_version_stable_then_second_canary(rollout: CapturingRollout, ctx: Context) -> None:
    rollout.handle(registered_event(ctx, register(ctx)))
    store = DeploymentStore(ctx)
    first = store.get("fraud")
    assert first is not None
    assert (first.stable_version, first.canary_version, first.canary_percent) == (1, None, 0)

    rollout.handle(registered_event(ctx, register(ctx)))
    second = store.get("fraud")
    assert second is not None
    assert (second.stable_version, second.canary_version) == (1, 2)
    assert second.canary_percent == ctx.settings.canary_percent == 10

    assert rollout.emitted == [
        (
            EventType.MODEL_DEPLOYED,
            ModelDeployed(model="fraud", stable_version=1, canary_percent=0),
        ),
        (
            EventType.MODEL_DEPLOYED,
            ModelDeployed(model="fraud", stable_version=1, canary_version=2, canary_percent=10),
        ),
    ]
    actions = [(e["action"], e["resource"]) for e in ctx.audit.entries()]
    assert ("model.deployed", "model/fraud/1") in actions
    assert ("model.canary", "model/fraud/2") in actions
    canary_entry = next(e for e in ctx.audit.entries() if e["action"] == "model.canary")
    assert canary_entry["details"]["canary_percent"] == 10
    assert canary_entry["actor"] == "test"


def test_redelivery_announces_again_without_a_second_deploy(
    rollout: CapturingRollout, ctx: Context
) -> None:
    event = registered_event(ctx, register(ctx))
    rollout.handle(event)
    generation = DeploymentStore(ctx).generation()
    rollout.handle(event)
    assert DeploymentStore(ctx).generation() == generation
    assert len(rollout.emitted) == 2 and rollout.emitted[0] == rollout.emitted[1]
    assert [e["action"] for e in ctx.audit.entries()].count("model.deployed") == 1


def test_out_of_region_version_is_refused_and_audited(
    rollout: CapturingRollout, ctx: Context
) -> None:
    # A registry writer that ran in Frankfurt (allowed there, not here).
    abroad = Context.create(
        Settings(
            home=ctx.settings.home,
            region="eu-central-1",
            allowed_regions=(*UAE_REGIONS, "eu-central-1"),
        ),
        actor="trainer-abroad",
    )
    data = register(abroad)
    with pytest.raises(ResidencyViolation, match="eu-central-1") as refused:
        rollout.handle(registered_event(ctx, data))
    assert refused.value.boundary == "model-deploy"
    assert DeploymentStore(ctx).get("fraud") is None
    assert rollout.emitted == []
    refusals = [e for e in ctx.audit.entries() if e["action"] == "policy.refused"]
    assert len(refusals) == 1
    assert refusals[0]["resource"] == "model fraud version 1"
    assert refusals[0]["region"] == "eu-central-1"
    assert refusals[0]["details"]["boundary"] == "model-deploy"
