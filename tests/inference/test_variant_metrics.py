"""Per-variant counters and the A/B report the router serves."""

from __future__ import annotations

import pytest

from falaj.deployments import TrafficSplit
from falaj.events import InferenceLogged, InferenceOutcome
from falaj.rollouts import VariantEvidence
from inference.variant_metrics import WINDOW, ServingMetrics

SPLIT = TrafficSplit("fraud", stable_version=1, canary_version=2, canary_percent=50)


def test_a_canary_that_fails_more_is_reported_significantly_worse() -> None:
    metrics = ServingMetrics()
    for i in range(400):
        metrics.observe("fraud", 1, "stable", 200, 2.0 + (i % 5) * 0.1)
        metrics.observe("fraud", 2, "canary", 503 if i % 10 == 0 else 200, 2.0 + (i % 7) * 0.1)
    metrics.observe("fraud", 1, "stable", 400, 1.0)  # the caller's fault, not the model's
    report = metrics.report(SPLIT)
    stable, canary = report["variants"]["v1 (stable)"], report["variants"]["v2 (canary)"]
    assert (stable["requests"], stable["server_errors"], stable["caller_errors"]) == (401, 0, 1)
    assert (canary["requests"], canary["server_errors"]) == (400, 40)
    errors = report["comparison"]["error_rate"]
    assert errors["difference"] == 0.1 and errors["significant"] is True
    latency = report["comparison"]["latency_ms"]
    assert latency["n_a"] == 401 and latency["n_b"] == 400 and latency["enough_data"]


def test_without_a_canary_there_is_nothing_to_compare_and_windows_stay_bounded() -> None:
    metrics = ServingMetrics()
    for _ in range(WINDOW + 5):
        metrics.observe("fraud", 1, "stable", 200, 1.0)
    report = metrics.report(TrafficSplit("fraud", stable_version=1))
    assert report["comparison"] is None
    assert report["variants"]["v1 (stable)"]["requests"] == WINDOW + 5
    assert report["variants"]["v1 (stable)"]["latency_p99_ms"] == 1.0
    # A canary with no traffic yet: no verdict.
    empty = metrics.report(SPLIT)["comparison"]["error_rate"]
    assert empty["enough_data"] is False and empty["significant"] is False
    # No data is null in JSON (NaN is not JSON; the router's response would fail).
    assert empty["b"] is None and empty["p_value"] is None


def logged(inference_id: str, version: int, variant: str, output: float) -> InferenceLogged:
    return InferenceLogged(
        inference_id=inference_id,
        model="fraud",
        version=version,
        variant=variant,
        inputs={"amount": [1.0]},
        outputs=[output],
    )


def test_predictions_and_outcomes_are_credited_to_the_variant_that_answered() -> None:
    metrics = ServingMetrics()
    split = TrafficSplit("fraud", 1, 2, 50, shadow_version=3)
    for i in range(100):
        # Stable says 0.9 and is right; the canary says 0.2 and is wrong; the
        # shadow saw the canary's requests and says 0.8.
        spread = (i % 5) * 0.01
        metrics.observe_predictions(logged(f"s{i}", 1, "stable", 0.9 + spread))
        metrics.observe_predictions(logged(f"c{i}", 2, "canary", 0.2 + spread))
        metrics.observe_predictions(logged(f"c{i}", 3, "shadow", 0.8))
    for i in range(100):
        for prefix in "sc":
            outcome = InferenceOutcome(inference_id=f"{prefix}{i}", model="fraud", label=1)
            assert metrics.observe_outcome(outcome)
    assert not metrics.observe_outcome(InferenceOutcome(inference_id="x", model="fraud", label=1))
    # A known id of another model is not this model's outcome.
    assert not metrics.observe_outcome(InferenceOutcome(inference_id="s1", model="loans", label=1))
    report = metrics.report(split)
    stable, canary = report["variants"]["v1 (stable)"], report["variants"]["v2 (canary)"]
    shadow = report["variants"]["v3 (shadow)"]
    assert stable["predictions"]["histogram"][9] == 100
    assert stable["predictions"]["mean"] == pytest.approx(0.92)
    assert canary["predictions"]["positive_rate"] == 0.0
    assert (stable["outcomes"]["accuracy"], canary["outcomes"]["accuracy"]) == (1.0, 0.0)
    assert shadow["outcomes"] == {"count": 100, "accuracy": 1.0}
    accuracy = report["comparison"]["accuracy"]
    assert accuracy["difference"] == -1.0 and accuracy["significant"] is True
    assert report["comparison"]["prediction_mean"]["significant"] is True


def test_evidence_is_what_each_variant_did_since_the_canary_was_first_judged() -> None:
    metrics = ServingMetrics()
    metrics.observe("fraud", 1, "stable", 500, 1.0)  # before the canary: not evidence
    assert metrics.evidence(TrafficSplit("fraud", 1)) is None
    stable, canary = metrics.evidence(SPLIT) or (None, None)
    assert stable == VariantEvidence(0, 0, 1.0) and canary == VariantEvidence(0, 0, None)
    metrics.observe("fraud", 1, "stable", 200, 1.0)
    metrics.observe("fraud", 2, "canary", 500, 3.0)
    stable, canary = metrics.evidence(SPLIT) or (None, None)
    assert stable == VariantEvidence(1, 0, 1.0) and canary == VariantEvidence(1, 1, 3.0)
    # A new canary starts from nothing: the old one's errors are not its own.
    _, fresh = metrics.evidence(TrafficSplit("fraud", 1, 4, 10)) or (None, None)
    assert fresh == VariantEvidence(0, 0, None)
    # Nor does a version made canary again keep what it earned the first time.
    _, again = metrics.evidence(SPLIT) or (None, None)
    assert (again.requests, again.server_errors) == (0, 0)
