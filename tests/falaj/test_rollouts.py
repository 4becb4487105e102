"""Rollout steps as pure rules, and the evidence that rolls a canary back."""

from __future__ import annotations

import pytest

from falaj.deployments import TrafficSplit
from falaj.errors import RolloutRefused
from falaj.rollouts import (
    KEEP_WATCHING,
    CanaryPolicy,
    CanaryVerdict,
    RolloutAction,
    RolloutStep,
    VariantEvidence,
    next_split,
)

A = RolloutAction


def step(
    action: RolloutAction, version: int | None = None, percent: int | None = None
) -> RolloutStep:
    return RolloutStep(model="fraud", action=action, version=version, percent=percent)


def after(current: TrafficSplit | None, s: RolloutStep) -> TrafficSplit:
    return next_split(current, s, default_percent=10)


def test_deploy_makes_the_first_version_stable_and_later_ones_the_canary() -> None:
    first = after(None, step(A.DEPLOY, 1))
    assert first == TrafficSplit("fraud", 1)
    second = after(first, step(A.DEPLOY, 2))
    assert second == TrafficSplit("fraud", 1, 2, 10)
    # A newer version replaces a canary that was never promoted.
    assert after(second, step(A.DEPLOY, 3)) == TrafficSplit("fraud", 1, 3, 10)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_deploying_a_served_or_older_version_changes_nothing(version: int) -> None:
    current = TrafficSplit("fraud", 2, 3, 10)
    assert after(current, step(A.DEPLOY, version)) is current


def test_canary_resize_promote_and_rollback() -> None:
    split = after(TrafficSplit("fraud", 1), step(A.CANARY, 2, 25))
    assert split == TrafficSplit("fraud", 1, 2, 25)
    assert after(split, step(A.CANARY, percent=50)) == TrafficSplit("fraud", 1, 2, 50)
    assert after(split, step(A.PROMOTE)) == TrafficSplit("fraud", 2)
    assert after(split, step(A.ROLLBACK)) == TrafficSplit("fraud", 1)


def test_repeating_a_promote_or_rollback_is_harmless() -> None:
    promoted = TrafficSplit("fraud", 2)
    assert after(promoted, step(A.PROMOTE, 2)) is promoted
    # A second router (or a redelivered event) rolling back canary 2 again.
    assert after(TrafficSplit("fraud", 1), step(A.ROLLBACK, 2)) == TrafficSplit("fraud", 1)


@pytest.mark.parametrize(
    ("current", "s", "message"),
    [
        (None, step(A.PROMOTE), "has no traffic split yet"),
        (TrafficSplit("fraud", 1), step(A.PROMOTE), r"no canary to promote \(stable version 1"),
        (TrafficSplit("fraud", 1), step(A.ROLLBACK), "no canary to roll back"),
        (TrafficSplit("fraud", 1, 2, 10), step(A.PROMOTE, 3), "expected the canary version 2"),
        (TrafficSplit("fraud", 1, 2, 10), step(A.ROLLBACK, 3), "expected the canary version 2"),
        (TrafficSplit("fraud", 1), step(A.CANARY, 1), "is the stable version already"),
        (TrafficSplit("fraud", 1), step(A.CANARY), "expected a version to make the canary"),
        (TrafficSplit("fraud", 1, 2, 10), step(A.SHADOW, 2), "serves traffic already"),
    ],
)
def test_a_step_that_does_not_fit_says_why_and_what_the_split_is(
    current: TrafficSplit | None, s: RolloutStep, message: str
) -> None:
    with pytest.raises(RolloutRefused, match=message):
        after(current, s)


def test_shadow_on_and_off_and_a_shadow_made_canary_stops_shadowing() -> None:
    shadowed = after(TrafficSplit("fraud", 1), step(A.SHADOW, 2))
    assert shadowed == TrafficSplit("fraud", 1, shadow_version=2)
    assert after(shadowed, step(A.SHADOW)) == TrafficSplit("fraud", 1)
    assert after(shadowed, step(A.CANARY, 2, 10)) == TrafficSplit("fraud", 1, 2, 10)


POLICY = CanaryPolicy(min_requests=200, error_rate_margin=0.02, p99_margin_ms=50.0)
JUDGE = CanaryPolicy(
    min_requests=200,
    error_rate_margin=0.02,
    p99_margin_ms=50.0,
    min_outcomes=100,
    accuracy_margin=0.02,
    promote=True,
)


def rollback_reason(verdict: CanaryVerdict) -> str:
    assert verdict.action is A.ROLLBACK, verdict
    return verdict.reason


def test_no_verdict_before_the_minimum_sample() -> None:
    stable = VariantEvidence(requests=1800, server_errors=0, latency_p99_ms=2.0)
    broken = VariantEvidence(requests=199, server_errors=199, latency_p99_ms=2.0)
    assert POLICY.verdict(stable, broken) == KEEP_WATCHING


def test_a_canary_with_significantly_more_errors_is_rolled_back() -> None:
    stable = VariantEvidence(requests=1800, server_errors=2, latency_p99_ms=2.0)
    canary = VariantEvidence(requests=200, server_errors=20, latency_p99_ms=2.0)
    reason = rollback_reason(POLICY.verdict(stable, canary))
    assert "error rate 10.0%" in reason and "0.1%" in reason


def test_errors_within_the_margin_or_not_significant_keep_the_canary() -> None:
    stable = VariantEvidence(requests=1800, server_errors=18, latency_p99_ms=2.0)
    # 2.5% vs 1%: beyond the 2-point margin? No (1.5 points).
    within = VariantEvidence(requests=200, server_errors=5, latency_p99_ms=2.0)
    assert POLICY.verdict(stable, within) == KEEP_WATCHING
    # 3.5% vs 1% over 200 requests: beyond the margin and significant -> out.
    beyond = VariantEvidence(requests=200, server_errors=7, latency_p99_ms=2.0)
    assert POLICY.verdict(stable, beyond).action is A.ROLLBACK


def test_a_canary_slower_at_p99_by_more_than_the_margin_is_rolled_back() -> None:
    stable = VariantEvidence(requests=500, server_errors=0, latency_p99_ms=2.0)
    assert POLICY.verdict(stable, VariantEvidence(500, 0, 51.9)) == KEEP_WATCHING
    assert "p99 latency 52.1 ms" in rollback_reason(
        POLICY.verdict(stable, VariantEvidence(500, 0, 52.1))
    )


def test_a_canary_no_worse_over_the_minimum_outcomes_is_promoted() -> None:
    stable = VariantEvidence(1800, 0, 2.0, outcomes=900, correct=720)  # 80%
    few = VariantEvidence(200, 0, 2.0, outcomes=99, correct=99)
    assert JUDGE.verdict(stable, few) == KEEP_WATCHING  # outcomes still to come
    better = VariantEvidence(200, 0, 2.0, outcomes=100, correct=90)
    verdict = JUDGE.verdict(stable, better)
    assert verdict.action is A.PROMOTE
    assert "accuracy 90.0% over 100 outcomes against the stable's 80.0%" in verdict.reason
    # Slightly worse, within the margin: no worse as far as the evidence goes.
    assert JUDGE.verdict(stable, VariantEvidence(200, 0, 2.0, 100, 79)).action is A.PROMOTE


def test_a_canary_behind_by_more_than_a_margin_but_not_significantly_keeps_its_share() -> None:
    stable = VariantEvidence(200, 0, 10.0, outcomes=100, correct=90)
    # 85% against 90%, and 1.5% errors: not significant, so not rolled back; behind on
    # accuracy by more than the margin, so not promoted either.
    behind = VariantEvidence(200, 3, 59.0, outcomes=100, correct=85)
    assert JUDGE.verdict(stable, behind) == KEEP_WATCHING
    # 3.5% errors against 1%: beyond the margin, not significant (p = 0.09) over 200 each.
    some_errors = VariantEvidence(200, 2, 10.0, outcomes=100, correct=90)
    erring = VariantEvidence(200, 7, 10.0, outcomes=100, correct=90)
    assert JUDGE.verdict(some_errors, erring) == KEEP_WATCHING


def test_a_canary_significantly_less_accurate_is_rolled_back_not_promoted() -> None:
    stable = VariantEvidence(1800, 0, 2.0, outcomes=900, correct=720)  # 80%
    worse = VariantEvidence(200, 0, 2.0, outcomes=100, correct=55)  # 55%
    reason = rollback_reason(JUDGE.verdict(stable, worse))
    assert "canary accuracy 55.0% over 100 outcomes is below the stable's 80.0%" in reason


def test_without_promotion_or_outcomes_the_canary_waits_for_a_person() -> None:
    stable = VariantEvidence(1800, 0, 2.0)
    canary = VariantEvidence(200, 0, 2.0)
    assert POLICY.verdict(stable, canary) == KEEP_WATCHING  # promote off
    assert JUDGE.verdict(stable, canary) == KEEP_WATCHING  # no outcomes yet
    no_labels = CanaryPolicy(
        min_requests=200, error_rate_margin=0.02, p99_margin_ms=50.0, promote=True
    )
    assert no_labels.verdict(stable, canary).action is A.PROMOTE
