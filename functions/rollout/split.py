"""How a newly registered model version changes a model's traffic split.

A pure function, so the policy can grow (promotion and rollback on evidence)
without touching the function that stores and announces the result.
"""

from __future__ import annotations

from falaj.deployments import TrafficSplit


def split_for_new_version(
    current: TrafficSplit | None,
    *,
    model: str,
    version: int,
    canary_percent: int,
    updated: str,
) -> TrafficSplit | None:
    """The split after ``version`` of ``model`` was registered, or None if it does not change.

    The first version serves all traffic. A later one becomes the canary beside
    the current stable version, with ``canary_percent`` of the traffic (what
    KServe does when ``canaryTrafficPercent`` is set on a new model version); it
    replaces an earlier canary that was never promoted. A version that is
    already served, or older than a served one (a redelivered or late event),
    changes nothing.
    """
    if current is None:
        return TrafficSplit(model=model, stable_version=version, updated=updated)
    if version <= max(current.versions):
        return None
    return TrafficSplit(
        model=model,
        stable_version=current.stable_version,
        canary_version=version,
        canary_percent=canary_percent,
        updated=updated,
    )
