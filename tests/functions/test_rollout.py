"""The rollout function: first version stable, later ones canary, residency enforced."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from onnx import TensorProto, helper

from falaj.context import Context
from falaj.deployments import DeploymentStore, TrafficSplit
from falaj.errors import RegistryError, ResidencyViolation, RolloutRefused
from falaj.events import (
    EventData,
    EventType,
    ModelDeployed,
    ModelRegistered,
    ParsedEvent,
    RolloutRequested,
    make_event,
    parse_event,
)
from falaj.profile import ReferenceProfile
from falaj.registry import ModelRegistry
from falaj.settings import UAE_REGIONS, Settings
from functions.rollout.function import RolloutFunction

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
            ModelDeployed(
                model="fraud",
                stable_version=1,
                canary_percent=0,
                reason="a new version was registered",
            ),
        ),
        (
            EventType.MODEL_DEPLOYED,
            ModelDeployed(
                model="fraud",
                stable_version=1,
                canary_version=2,
                canary_percent=10,
                reason="a new version was registered",
            ),
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


def requested_event(ctx: Context, **data: object) -> ParsedEvent:
    event = make_event(
        EventType.ROLLOUT_REQUESTED,
        RolloutRequested(model="fraud", **data),  # type: ignore[arg-type]
        region=ctx.settings.region,
    )
    return parse_event(event, ctx.policy)


def test_requested_steps_resize_promote_and_roll_back_with_audit(
    rollout: CapturingRollout, ctx: Context
) -> None:
    for _ in range(3):
        rollout.handle(registered_event(ctx, register(ctx)))
    store = DeploymentStore(ctx)
    assert store.get("fraud") == TrafficSplit("fraud", 1, 3, 10, store.get("fraud").updated)  # type: ignore[union-attr]

    rollout.handle(requested_event(ctx, action="canary", percent=50, reason="more evidence"))
    split = store.get("fraud")
    assert split is not None and (split.canary_version, split.canary_percent) == (3, 50)

    rollout.handle(requested_event(ctx, action="promote", version=3))
    split = store.get("fraud")
    assert split is not None and split.versions == (3,)

    rollout.handle(requested_event(ctx, action="canary", version=2, percent=20))
    rollout.handle(requested_event(ctx, action="rollback", reason="worse AUC"))
    split = store.get("fraud")
    assert split is not None and split.versions == (3,)

    actions = [e.action for _, e in rollout.emitted if isinstance(e, ModelDeployed)]
    assert actions[-4:] == ["canary", "promote", "canary", "rollback"]
    rolled_back = [e for e in ctx.audit.entries() if e["action"] == "model.rolled_back"]
    assert len(rolled_back) == 1
    assert rolled_back[0]["details"]["reason"] == "worse AUC"
    assert rolled_back[0]["details"]["before"] == ("stable version 3, canary version 2 at 20%")
    assert rolled_back[0]["details"]["requested_by"] == "/falaj/cli"


def test_a_step_that_does_not_fit_the_split_is_refused_and_audited(
    rollout: CapturingRollout, ctx: Context
) -> None:
    rollout.handle(registered_event(ctx, register(ctx)))
    with pytest.raises(RolloutRefused, match=r"no canary to promote \(stable version 1"):
        rollout.handle(requested_event(ctx, action="promote"))
    with pytest.raises(RegistryError):
        rollout.handle(requested_event(ctx, action="canary", version=7))
    refused = [e for e in ctx.audit.entries() if e["outcome"] == "refused"]
    assert [e["action"] for e in refused] == ["model.promoted", "model.canary"]
    split = DeploymentStore(ctx).get("fraud")
    assert split is not None and split.versions == (1,)
