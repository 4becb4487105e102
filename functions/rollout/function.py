"""Rollout: every change of a model's traffic split that comes as an event.

``model.registered``: the first version becomes stable, a later one the canary
with ``FALAJ_CANARY_PERCENT`` of the traffic. ``rollout.requested``: a person
or the loop asks to start or resize a canary, promote it, roll it back, or
shadow a version. Either way ``falaj.rollouts`` checks the step (residency at
the model-deploy boundary included), writes the split (to the deployment store
the local router reads, or with ``FALAJ_SERVING_BACKEND=kserve`` to the model's
InferenceService through the Kubernetes API) and audits it; this function announces the new
split with ``model.deployed`` so the rest of the loop sees what serves.

A step that does not fit the split (promote without a canary) is refused with
``RolloutRefused`` (409): the broker dead-letters it with the reason, as it
would never succeed on retry.
"""

from __future__ import annotations

from falaj.deployments import TrafficSplit, TrafficStore, open_traffic_store
from falaj.errors import EventError, FalajError
from falaj.events import EventType, ModelRegistered, ParsedEvent, RolloutRequested
from falaj.function import CloudEventFunction
from falaj.logs import get_logger
from falaj.registry import ModelRegistry
from falaj.rollouts import RolloutAction, Rollouts, RolloutStep, deployed_event, deployed_subject


class RolloutFunction(CloudEventFunction):
    name = "rollout"
    accepts = frozenset({EventType.MODEL_REGISTERED, EventType.ROLLOUT_REQUESTED})

    def __init__(self) -> None:
        super().__init__()
        self._store: TrafficStore | None = None
        self._rollouts: Rollouts | None = None
        self.log = get_logger(function=self.name)

    def on_start(self) -> None:
        # The local deployment store, or the cluster's InferenceServices.
        self._store = open_traffic_store(self.ctx)
        self._rollouts = Rollouts(self.ctx, self._store, ModelRegistry(self.ctx))

    def stop(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        super().stop()

    def handle(self, event: ParsedEvent) -> None:
        if self._rollouts is None:
            raise FalajError(f"function {self.name} used before start()")
        step = _step(event)
        result = self._rollouts.apply(step, actor=self.ctx.actor)
        superseded = step.version not in result.after.running_versions
        if not result.changed and step.action is RolloutAction.DEPLOY and superseded:
            # A late event for an older version: nothing serves it, nothing to say.
            self.log.info("already-superseded", model=step.model, version=step.version)
            return
        # Announced on a redelivery too: the split may have been stored by an
        # attempt whose announcement failed.
        self._announce(result.after, step)
        self.log.info(
            "split.changed" if result.changed else "split.unchanged",
            model=step.model,
            action=str(step.action),
            stable_version=result.after.stable_version,
            canary_version=result.after.canary_version,
            canary_percent=result.after.canary_percent,
        )

    def _announce(self, split: TrafficSplit, step: RolloutStep) -> None:
        self.emit(
            EventType.MODEL_DEPLOYED,
            deployed_event(split, step),
            subject=deployed_subject(split, step),
        )


def _step(event: ParsedEvent) -> RolloutStep:
    data = event.data
    if isinstance(data, ModelRegistered):
        return RolloutStep(
            model=data.model,
            action=RolloutAction.DEPLOY,
            version=data.version,
            reason="a new version was registered",
            requested_by=event.source,
        )
    if isinstance(data, RolloutRequested):
        return RolloutStep(
            model=data.model,
            action=RolloutAction(data.action),
            version=data.version,
            percent=data.percent,
            reason=data.reason,
            requested_by=event.source,
        )
    raise EventError(
        f"rollout takes {EventType.MODEL_REGISTERED} and {EventType.ROLLOUT_REQUESTED} events, "
        f"got {event.type}"
    )
