"""Per-variant counters and the A/B report the router serves."""

from __future__ import annotations

from falaj.deployments import TrafficSplit
from inference.variant_metrics import LATENCY_WINDOW, ServingMetrics

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
    for _ in range(LATENCY_WINDOW + 5):
        metrics.observe("fraud", 1, "stable", 200, 1.0)
    report = metrics.report(TrafficSplit("fraud", stable_version=1))
    assert report["comparison"] is None
    assert report["variants"]["v1 (stable)"]["requests"] == LATENCY_WINDOW + 5
    assert report["variants"]["v1 (stable)"]["latency_p99_ms"] == 1.0
    # A canary with no traffic yet: no verdict.
    empty = metrics.report(SPLIT)["comparison"]["error_rate"]
    assert empty["enough_data"] is False and empty["significant"] is False
