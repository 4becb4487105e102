"""Rollout steps: how a model's traffic split may change, and who changed it.

One place for every change of a split, whoever asks: the rollout function
(``model.registered`` and ``rollout.requested`` events), ``falaj rollout``, and
the router's automatic rollback. Each step is a pure function of the current
split (``next_split``), so the rules are tested without a store; ``Rollouts``
applies one: a version about to take traffic is checked against the residency
policy at the model-deploy boundary, the split is written to the deployment
store, and the change is audited with its reason.

The steps are KServe's (STYLE.md): a new version becomes the canary with
``canaryTrafficPercent`` of the traffic; promote makes the canary the stable
version; rollback sends all traffic back to the stable version. A shadow gets
a copy of the traffic and answers no one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from cloudevents.http import CloudEvent

from falaj.ab_stats import compare_rates
from falaj.audit import Outcome
from falaj.context import Context
from falaj.deployments import TrafficSplit, TrafficStore, now_iso
from falaj.errors import FalajError, RolloutRefused
from falaj.events import EventType, ModelDeployed, make_event
from falaj.registry import ModelRegistry
from falaj.residency import Boundary
from falaj.settings import Settings


class RolloutAction(StrEnum):
    #: A newly registered version: the first one becomes stable, a later one the canary.
    DEPLOY = "deploy"
    #: A version becomes the canary, or the canary's share of traffic changes.
    CANARY = "canary"
    #: The canary becomes the stable version and takes all traffic.
    PROMOTE = "promote"
    #: The canary leaves; all traffic goes back to the stable version.
    ROLLBACK = "rollback"
    #: A version starts (or, with no version, stops) getting a copy of the traffic.
    SHADOW = "shadow"


@dataclass(frozen=True, kw_only=True)
class RolloutStep:
    """What someone asks of a model's traffic."""

    model: str
    action: RolloutAction
    version: int | None = None
    percent: int | None = None
    reason: str = ""
    #: Where the request came from (an event's source, the CLI), for the audit log.
    requested_by: str = ""


@dataclass(frozen=True)
class RolloutResult:
    step: RolloutStep
    before: TrafficSplit | None
    after: TrafficSplit
    #: False when the split was already what the step asks (a redelivered event).
    changed: bool
    details: dict[str, Any] = field(default_factory=dict)


def describe_split(split: TrafficSplit | None) -> str:
    if split is None:
        return "no version serves yet"
    text = f"stable version {split.stable_version}"
    if split.canary_version is not None:
        text += f", canary version {split.canary_version} at {split.canary_percent}%"
    if split.shadow_version is not None:
        text += f", shadow version {split.shadow_version}"
    return text


def next_split(
    current: TrafficSplit | None, step: RolloutStep, *, default_percent: int
) -> TrafficSplit:
    """The split after ``step``; ``RolloutRefused`` (saying what the split is) when it cannot be.

    A step that asks for what is already so returns the current split
    unchanged (so a redelivered event is harmless).
    """
    model, version = step.model, step.version
    if step.action is RolloutAction.DEPLOY:
        if version is None:
            raise RolloutRefused(f"deploy {model}: expected a version, got none")
        if current is None:
            return TrafficSplit(model=model, stable_version=version)
        if version <= max(current.versions):
            # Served already, or older than what serves: a redelivered or late event.
            return current
        return _with_canary(current, version, default_percent)
    if current is None:
        raise RolloutRefused(
            f"{step.action} {model}: {model!r} has no traffic split yet; a registered "
            "version is deployed first (or run 'falaj rollout canary' after it serves)"
        )
    now = describe_split(current)
    if step.action is RolloutAction.CANARY:
        if version is None:
            if current.canary_version is None:
                raise RolloutRefused(
                    f"canary {model}: expected a version to make the canary ({now})"
                )
            version = current.canary_version
        if version == current.stable_version:
            raise RolloutRefused(
                f"canary {model}: version {version} is the stable version already ({now})"
            )
        percent = default_percent if step.percent is None else step.percent
        return _with_canary(current, version, percent)
    if step.action is RolloutAction.PROMOTE:
        if current.canary_version is None:
            if version == current.stable_version:
                return current  # promoted already
            raise RolloutRefused(f"promote {model}: there is no canary to promote ({now})")
        if version is not None and version != current.canary_version:
            raise RolloutRefused(
                f"promote {model}: expected the canary version {current.canary_version}, "
                f"got {version} ({now})"
            )
        return replace(
            current, stable_version=current.canary_version, canary_version=None, canary_percent=0
        )
    if step.action is RolloutAction.ROLLBACK:
        if current.canary_version is None:
            if version is not None and version != current.stable_version:
                return current  # rolled back already (a redelivery, or a second router)
            raise RolloutRefused(f"rollback {model}: there is no canary to roll back ({now})")
        if version is not None and version != current.canary_version:
            raise RolloutRefused(
                f"rollback {model}: expected the canary version {current.canary_version}, "
                f"got {version} ({now})"
            )
        return replace(current, canary_version=None, canary_percent=0)
    # SHADOW
    if version is not None and version in current.versions:
        raise RolloutRefused(
            f"shadow {model}: version {version} serves traffic already; a shadow is a "
            f"version that does not ({now})"
        )
    return replace(current, shadow_version=version)


def deployed_event(split: TrafficSplit, step: RolloutStep) -> ModelDeployed:
    """The ``model.deployed`` announcement of ``split`` after ``step``."""
    return ModelDeployed(
        model=split.model,
        stable_version=split.stable_version,
        canary_version=split.canary_version,
        canary_percent=split.canary_percent,
        shadow_version=split.shadow_version,
        action=step.action.value,  # the same five names as RolloutStepName
        reason=step.reason,
    )


def deployed_subject(split: TrafficSplit, step: RolloutStep) -> str:
    """The announcement's subject: ``model/version``, the version the step was about."""
    return f"{split.model}/{step.version or split.stable_version}"


def announcement(result: RolloutResult, *, region: str, source: str) -> CloudEvent:
    """The ``model.deployed`` event that tells the router (and everyone) of a changed split."""
    return make_event(
        EventType.MODEL_DEPLOYED,
        deployed_event(result.after, result.step),
        region=region,
        source=source,
        subject=deployed_subject(result.after, result.step),
    )


def _with_canary(current: TrafficSplit, version: int, percent: int) -> TrafficSplit:
    shadow = None if current.shadow_version == version else current.shadow_version
    return replace(current, canary_version=version, canary_percent=percent, shadow_version=shadow)


def _same(a: TrafficSplit | None, b: TrafficSplit) -> bool:
    return a is not None and replace(a, updated="") == replace(b, updated="")


class Rollouts:
    """Applies rollout steps to the deployment store, checked and audited."""

    def __init__(self, ctx: Context, store: TrafficStore, registry: ModelRegistry) -> None:
        self.ctx = ctx
        self.store = store
        self.registry = registry

    def apply(self, step: RolloutStep, *, actor: str, role: str = "service") -> RolloutResult:
        current = self.store.get(step.model)
        try:
            wanted = next_split(current, step, default_percent=self.ctx.settings.canary_percent)
            entering = _entering(current, wanted)
            details: dict[str, Any] = {}
            for version in entering:
                # The registry, not the request, says where a version lives;
                # an unknown version is a RegistryError (404) here.
                found = self.registry.get(step.model, version)
                self.ctx.policy.check_region(
                    found.region,
                    resource=f"model {step.model} version {version}",
                    boundary=Boundary.MODEL_DEPLOY,
                )
                details[f"digest_v{version}"] = found.digest
        except FalajError as exc:
            self._audit(step, current, None, actor, role, Outcome.REFUSED, {"error": str(exc)})
            raise
        if _same(current, wanted):
            return RolloutResult(step, current, current or wanted, changed=False)
        after = replace(wanted, updated=now_iso())
        self.store.set(after)
        self._audit(step, current, after, actor, role, Outcome.SUCCESS, details)
        return RolloutResult(step, current, after, changed=True, details=details)

    def _audit(
        self,
        step: RolloutStep,
        before: TrafficSplit | None,
        after: TrafficSplit | None,
        actor: str,
        role: str,
        outcome: Outcome,
        details: dict[str, Any],
    ) -> None:
        version = step.version or (after.canary_version or after.stable_version if after else None)
        self.ctx.audit.record(
            _audit_action(step, after),
            actor=actor,
            role=role,
            resource=f"model/{step.model}" + (f"/{version}" if version else ""),
            region=self.ctx.settings.region,
            outcome=outcome,
            details={
                "before": describe_split(before),
                "after": describe_split(after) if after else None,
                **(after.traffic() if after else {}),
                "reason": step.reason,
                "requested_by": step.requested_by,
                **details,
            },
        )


#: What the audit log calls each step (past tense: what happened).
_AUDIT_ACTIONS = {
    RolloutAction.CANARY: "model.canary",
    RolloutAction.PROMOTE: "model.promoted",
    RolloutAction.ROLLBACK: "model.rolled_back",
    RolloutAction.SHADOW: "model.shadow",
}


def _audit_action(step: RolloutStep, after: TrafficSplit | None) -> str:
    if step.action is RolloutAction.DEPLOY:
        became_canary = after is not None and after.canary_version == step.version
        return "model.canary" if became_canary else "model.deployed"
    return _AUDIT_ACTIONS[step.action]


def _entering(current: TrafficSplit | None, wanted: TrafficSplit) -> list[int]:
    """Versions that get traffic (or a copy of it) after the change and did not before."""
    before = set(current.running_versions) if current else set()
    return [v for v in wanted.running_versions if v not in before]


@dataclass(frozen=True)
class VariantEvidence:
    """What the router has seen of one variant: enough to judge a canary."""

    requests: int
    server_errors: int
    latency_p99_ms: float | None
    #: Predictions whose real outcome came back (``/outcomes``), and how many were right.
    outcomes: int = 0
    correct: int = 0


@dataclass(frozen=True)
class CanaryVerdict:
    """What to do with a canary now: promote it, roll it back, or (None) keep watching."""

    action: RolloutAction | None
    reason: str = ""


KEEP_WATCHING = CanaryVerdict(None)


@dataclass(frozen=True, kw_only=True)
class CanaryPolicy:
    """When a canary has shown enough to be promoted, or is worse enough to be taken out.

    Both variants need ``min_requests`` first: a p99 or an error rate over a
    handful of requests is noise, and a rollback on noise throws away a good
    version. Then the canary is rolled back when any of these holds:

    - its error rate exceeds the stable's by ``error_rate_margin`` (absolute)
      *and* the difference is significant (two-proportion z-test), so one
      unlucky 5xx in a small sample does not count;
    - its p99 exceeds the stable's by ``p99_margin_ms``: an absolute margin,
      because a ratio of two small p99s (2 ms against 4 ms) is mostly a shared
      machine's noise;
    - with ``min_outcomes`` outcomes each, its accuracy is below the stable's
      by more than ``accuracy_margin``, significantly (z-test): a retrained
      model that answers fast and without errors can still be wrong.

    Otherwise, with ``promote`` on, it is promoted once it is *no worse*: the
    request minimum reached and, unless ``min_outcomes`` is 0 (a model whose
    outcomes never come back), the outcome minimum too, and neither its error
    rate nor (with outcomes) its accuracy behind the stable's by more than the
    margin even where that gap is not yet significant: such a canary keeps its
    share until the evidence settles it either way.
    """

    min_requests: int
    error_rate_margin: float
    p99_margin_ms: float
    min_outcomes: int = 0
    accuracy_margin: float = 0.02
    promote: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> CanaryPolicy:
        return cls(
            min_requests=settings.rollback_min_requests,
            error_rate_margin=settings.rollback_error_rate_margin,
            p99_margin_ms=settings.rollback_p99_margin_ms,
            min_outcomes=settings.canary_min_outcomes,
            accuracy_margin=settings.canary_accuracy_margin,
            promote=settings.canary_auto_promote,
        )

    def verdict(self, stable: VariantEvidence, canary: VariantEvidence) -> CanaryVerdict:
        if min(stable.requests, canary.requests) < self.min_requests:
            return KEEP_WATCHING
        worse = self._worse(stable, canary)
        if worse is not None:
            return CanaryVerdict(RolloutAction.ROLLBACK, worse)
        judged_outcomes = min(stable.outcomes, canary.outcomes) >= self.min_outcomes
        if not self.promote or not judged_outcomes or self._behind(stable, canary):
            return KEEP_WATCHING
        evidence = f"{canary.requests} requests, error rate and p99 within their margins"
        if self.min_outcomes:
            evidence += (
                f"; accuracy {canary.correct / canary.outcomes:.1%} over {canary.outcomes} "
                f"outcomes against the stable's {stable.correct / stable.outcomes:.1%}"
            )
        return CanaryVerdict(RolloutAction.PROMOTE, f"no worse than the stable: {evidence}")

    def _behind(self, stable: VariantEvidence, canary: VariantEvidence) -> bool:
        """Whether the canary looks worse beyond a margin, significant or not yet.

        Not enough to roll it back (that needs significance), but not "no worse"
        either: it keeps serving its share until the evidence settles it.
        """
        error_gap = canary.server_errors / canary.requests - stable.server_errors / stable.requests
        if error_gap > self.error_rate_margin:
            return True
        if self.min_outcomes:
            accuracy_gap = stable.correct / stable.outcomes - canary.correct / canary.outcomes
            return accuracy_gap > self.accuracy_margin
        return False

    def _worse(self, stable: VariantEvidence, canary: VariantEvidence) -> str | None:
        """Why the canary is worse than the stable, or None."""
        errors = compare_rates(
            stable.server_errors, stable.requests, canary.server_errors, canary.requests
        )
        if errors.difference > self.error_rate_margin and errors.significant():
            return (
                f"canary error rate {errors.b:.1%} over {canary.requests} requests exceeds "
                f"the stable's {errors.a:.1%} by more than {self.error_rate_margin:.1%} "
                f"(p={errors.p_value:.2g})"
            )
        p99_stable, p99_canary = stable.latency_p99_ms, canary.latency_p99_ms
        if (
            p99_stable is not None
            and p99_canary is not None
            and p99_canary > p99_stable + self.p99_margin_ms
        ):
            return (
                f"canary p99 latency {p99_canary:.1f} ms exceeds the stable's "
                f"{p99_stable:.1f} ms by more than {self.p99_margin_ms:g} ms"
            )
        if self.min_outcomes and min(stable.outcomes, canary.outcomes) >= self.min_outcomes:
            accuracy = compare_rates(
                stable.correct, stable.outcomes, canary.correct, canary.outcomes
            )
            if -accuracy.difference > self.accuracy_margin and accuracy.significant():
                return (
                    f"canary accuracy {accuracy.b:.1%} over {canary.outcomes} outcomes is below "
                    f"the stable's {accuracy.a:.1%} by more than {self.accuracy_margin:.1%} "
                    f"(p={accuracy.p_value:.2g})"
                )
        return None
