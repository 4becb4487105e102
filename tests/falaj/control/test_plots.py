"""The dashboard's figures: what they draw, checked in the figure JSON plotly.js receives."""

from __future__ import annotations

import json

from falaj.control.plots import (
    drift_over_time,
    events_by_type,
    metrics_by_version,
    traffic,
    training_loss,
)


def _window(end: str, value: float, drifted: bool) -> dict[str, object]:
    return {
        "window_end": end,
        "scores": {
            "amount": {"psi": {"value": value, "p_value": None, "drifted": drifted}},
            "hour": {"psi": {"value": 0.01, "p_value": None, "drifted": False}},
        },
    }


def test_drift_is_drawn_per_feature_over_time_with_the_threshold_and_drifted_windows_marked() -> (
    None
):
    series = {
        "model": "fraud",
        "version": 1,
        "windows": [
            _window("2026-11-24T10:00", 0.05, False),
            _window("2026-11-24T10:05", 0.4, True),
        ],
    }
    [plot] = drift_over_time(series, {"psi": 0.2, "ks": 0.1})
    assert plot.id == "drift-fraud-1-psi"
    figure = json.loads(plot.figure)
    traces = {trace["name"]: trace for trace in figure["data"]}
    assert traces["amount"]["y"] == [0.05, 0.4]
    assert traces["amount"]["marker"]["symbol"] == ["circle", "x"]
    assert traces["hour"]["marker"]["symbol"] == ["circle", "circle"]
    [threshold] = figure["layout"]["shapes"]
    assert (threshold["y0"], threshold["y1"], threshold["line"]["dash"]) == (0.2, 0.2, "dash")
    assert "threshold 0.2 (drift above)" in json.dumps(figure["layout"]["annotations"])


def test_a_statistic_without_a_threshold_is_drawn_without_a_line() -> None:
    series = {"model": "fraud", "version": 2, "windows": [_window("t", 0.1, False)]}
    [plot] = drift_over_time(series, {})
    assert "shapes" not in json.loads(plot.figure)["layout"]


def test_the_traffic_plot_sets_configured_beside_observed_shares() -> None:
    rollout = {
        "model": "fraud",
        "split": {"stable_version": 1, "canary_version": 2, "canary_percent": 10},
        "live": {
            "variants": {
                "v1 (stable)": {"requests": 270, "latency_p50_ms": 2.0, "latency_p99_ms": 9.0},
                "v2 (canary)": {"requests": 30, "latency_p50_ms": 2.5, "latency_p99_ms": 11.0},
            }
        },
    }
    figure = json.loads(traffic(rollout).figure)
    bars = {trace["name"]: trace["y"] for trace in figure["data"]}
    assert bars["configured"] == [90, 10]
    assert bars["observed"] == [90.0, 10.0]
    assert bars["p99"] == [9.0, 11.0]


def test_metrics_are_drawn_across_versions_and_names_cannot_close_the_script_element() -> None:
    models = [
        {
            "model": "fraud</script><!--<script>alert(1)",
            "versions": [
                {"version": 1, "metrics": {"auc": 0.91, "log_loss": 0.3}},
                {"version": 2, "metrics": {"auc": 0.94, "log_loss": 0.25}},
            ],
        }
    ]
    [plot] = metrics_by_version(models)
    assert "</script>" not in plot.figure and "<!--" not in plot.figure
    figure = json.loads(plot.figure)
    assert {t["name"]: t["y"] for t in figure["data"]} == {
        "AUC": [0.91, 0.94],
        "log-loss": [0.3, 0.25],
    }
    assert "</script>" in figure["layout"]["title"]["text"]  # the text is intact once parsed


def test_events_are_counted_by_type_without_the_common_prefix() -> None:
    figure = json.loads(
        events_by_type({"dev.falaj.data.ingested": 2, "dev.falaj.model.deployed": 5}).figure
    )
    [bars] = figure["data"]
    assert (bars["y"], bars["x"]) == (["data.ingested", "model.deployed"], [2, 5])


def test_training_loss_is_drawn_by_epoch_for_each_job() -> None:
    figure = json.loads(
        training_loss({"train-b": [(1, 0.5), (2, 0.3)], "train-a": [(1, 0.7)]}).figure
    )
    assert [(t["name"], t["x"], t["y"]) for t in figure["data"]] == [
        ("train-a", [1], [0.7]),
        ("train-b", [1, 2], [0.5, 0.3]),
    ]
