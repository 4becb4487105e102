"""Rollout: a registered model version goes out as stable (the first) or canary.

Before anything is served, the version's region is checked against the
residency policy at the model-deploy boundary. The new split is written to the
deployment store (the local InferenceService), audited, and announced with
``model.deployed`` so the rest of the loop sees what serves traffic.
"""

from __future__ import annotations

from falaj.deployments import DeploymentStore, TrafficSplit, now_iso
from falaj.errors import EventError, FalajError
from falaj.events import EventType, ModelDeployed, ModelRegistered, ParsedEvent
from falaj.function import CloudEventFunction
from falaj.logs import get_logger
from falaj.registry import ModelRegistry
from falaj.residency import Boundary
from functions.rollout.split import split_for_new_version


class RolloutFunction(CloudEventFunction):
    name = "rollout"
    accepts = frozenset({EventType.MODEL_REGISTERED})

    def __init__(self) -> None:
        super().__init__()
        self._store: DeploymentStore | None = None
        self._registry: ModelRegistry | None = None
        self.log = get_logger(function=self.name)

    def on_start(self) -> None:
        self._store = DeploymentStore(self.ctx)
        self._registry = ModelRegistry(self.ctx)

    def stop(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        super().stop()

    def handle(self, event: ParsedEvent) -> None:
        data = event.data
        if not isinstance(data, ModelRegistered):
            raise EventError(f"{self.name} deploys {EventType.MODEL_REGISTERED} events only")
        if self._store is None or self._registry is None:
            raise FalajError(f"function {self.name} used before start()")
        # The registry, not the event, is the authority on where the version lives.
        version = self._registry.get(data.model, data.version)
        self.ctx.policy.check_region(
            version.region,
            resource=f"model {data.model} version {data.version}",
            boundary=Boundary.MODEL_DEPLOY,
        )
        split = split_for_new_version(
            self._store.get(data.model),
            model=data.model,
            version=data.version,
            canary_percent=self.ctx.settings.canary_percent,
            updated=now_iso(),
        )
        if split is None:
            current = self._store.get(data.model)
            if current is not None and data.version in current.versions:
                # A redelivery: the split may have been stored by an attempt
                # whose announcement failed, so announce it again.
                self._announce(current, data.version)
            self.log.info("already-deployed", model=data.model, version=data.version)
            return
        self._store.set(split)
        is_canary = split.canary_version == data.version
        self.ctx.audit.record(
            "model.canary" if is_canary else "model.deployed",
            actor=self.ctx.actor,
            resource=f"model/{data.model}/{data.version}",
            region=version.region,
            details={
                "stable_version": split.stable_version,
                "canary_version": split.canary_version,
                "canary_percent": split.canary_percent,
                "digest": version.digest,
            },
        )
        self._announce(split, data.version)
        self.log.info(
            "deployed",
            model=split.model,
            stable_version=split.stable_version,
            canary_version=split.canary_version,
            canary_percent=split.canary_percent,
        )

    def _announce(self, split: TrafficSplit, version: int) -> None:
        self.emit(
            EventType.MODEL_DEPLOYED,
            ModelDeployed(
                model=split.model,
                stable_version=split.stable_version,
                canary_version=split.canary_version,
                canary_percent=split.canary_percent,
            ),
            subject=f"{split.model}/{version}",
        )
