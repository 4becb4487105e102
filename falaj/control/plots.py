"""The dashboard's plots: Plotly figures built here, drawn in the browser by plotly.js.

Figures are built with ``plotly.graph_objects`` (which checks every property)
from the views' data and sent as JSON; the page draws them with the plotly.js
that ships inside the plotly wheel, so nothing is fetched from a CDN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

#: The metrics of a version drawn across versions, and how each is named on the axis.
VERSION_METRICS = {"auc": "AUC", "accuracy": "accuracy", "log_loss": "log-loss"}
#: Statistics whose value drifts when it goes above its threshold; the others (a p-value) below.
BELOW_IS_DRIFT = frozenset({"chi_square"})


@dataclass(frozen=True)
class Plot:
    """One figure on a page: an id for the element it is drawn in, and the figure as JSON."""

    id: str
    title: str
    figure: str


#: Above the plot, right-aligned: below it, a legend collides with an x axis's title.
LEGEND_ABOVE = {"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom"}
#: Below the plot, for subplots: above it, a legend collides with their titles.
LEGEND_BELOW = {"orientation": "h", "x": 0, "y": -0.12, "yanchor": "top"}


def _layout(
    fig: go.Figure, title: str, *, height: int = 320, legend: Mapping[str, Any] = LEGEND_ABOVE
) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0, "font": {"size": 14}},
        height=height,
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
        template="plotly_white",
        legend=dict(legend),
        showlegend=True,
    )
    return fig


def _plot(
    plot_id: str, title: str, fig: go.Figure, *, legend: Mapping[str, Any] = LEGEND_ABOVE
) -> Plot:
    # No "<" reaches the page's <script type="application/json"> as is (JSON's
    # own escape for it, as Jinja's tojson does), so a name in the data can
    # neither close the element early ("</script>") nor open a comment ("<!--").
    laid_out = _layout(fig, title, legend=legend)
    return Plot(plot_id, title, laid_out.to_json().replace("<", "\\u003c"))


def metrics_by_version(models: Sequence[Mapping[str, Any]]) -> list[Plot]:
    """Per model, each version's evaluation metrics: is the newest better than the last?"""
    plots = []
    for model in models:
        versions = model["versions"]
        fig = go.Figure()
        for key, label in VERSION_METRICS.items():
            points = [(v["version"], v["metrics"][key]) for v in versions if key in v["metrics"]]
            if points:
                xs, ys = zip(*points, strict=True)
                fig.add_trace(go.Scatter(x=list(xs), y=list(ys), mode="lines+markers", name=label))
        fig.update_xaxes(title_text="version", dtick=1)
        plots.append(
            _plot(f"metrics-{model['model']}", f"{model['model']}: metrics by version", fig)
        )
    return plots


def traffic(rollout: Mapping[str, Any]) -> Plot:
    """The split as configured and as observed, and each variant's latency."""
    split, live = rollout["split"], rollout.get("live") or {}
    variants: Mapping[str, Mapping[str, Any]] = live.get("variants", {})
    configured = {f"v{split['stable_version']} (stable)": 100 - int(split["canary_percent"])}
    if split.get("canary_version") is not None:
        configured[f"v{split['canary_version']} (canary)"] = int(split["canary_percent"])
    total = sum(int(m.get("requests", 0)) for m in variants.values()) or 1
    names = list(dict.fromkeys([*configured, *variants]))
    fig = make_subplots(rows=1, cols=2, subplot_titles=("share of traffic (%)", "latency (ms)"))
    fig.add_trace(
        go.Bar(x=names, y=[configured.get(n, 0) for n in names], name="configured"), row=1, col=1
    )
    fig.add_trace(
        go.Bar(
            x=names,
            y=[100 * int(variants.get(n, {}).get("requests", 0)) / total for n in names],
            name="observed",
        ),
        row=1,
        col=1,
    )
    for key, label in (("latency_p50_ms", "p50"), ("latency_p99_ms", "p99")):
        fig.add_trace(
            go.Bar(x=names, y=[variants.get(n, {}).get(key) for n in names], name=label),
            row=1,
            col=2,
        )
    return _plot(
        f"traffic-{rollout['model']}",
        f"{rollout['model']}: traffic split",
        fig,
        legend=LEGEND_BELOW,
    )


def drift_over_time(series: Mapping[str, Any], thresholds: Mapping[str, float]) -> list[Plot]:
    """Per statistic of a model version, each feature over its windows, the threshold drawn.

    A window where a feature was past its threshold is marked with an x.
    """
    windows = series["windows"]
    by_statistic: dict[str, dict[str, list[tuple[str, float | None, bool]]]] = {}
    for window in windows:
        for feature, statistics in window["scores"].items():
            for name, score in statistics.items():
                by_statistic.setdefault(name, {}).setdefault(feature, []).append(
                    (window["window_end"], score["value"], bool(score["drifted"]))
                )
    plots = []
    label = f"{series['model']} v{series['version']}"
    for name, features in sorted(by_statistic.items()):
        fig = go.Figure()
        for feature, points in sorted(features.items()):
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in points],
                    y=[p[1] for p in points],
                    mode="lines+markers",
                    name=feature,
                    marker={"symbol": ["x" if p[2] else "circle" for p in points], "size": 7},
                )
            )
        if name in thresholds:
            side = "below" if name in BELOW_IS_DRIFT else "above"
            fig.add_hline(
                y=thresholds[name],
                line_dash="dash",
                line_color="firebrick",
                annotation_text=f"threshold {thresholds[name]:g} (drift {side})",
                annotation_position="top left",
            )
        plots.append(
            _plot(f"drift-{series['model']}-{series['version']}-{name}", f"{label}: {name}", fig)
        )
    return plots


def events_by_type(by_type: Mapping[str, int]) -> Plot:
    """How many of the newest events are of each type."""
    ordered = sorted(by_type.items(), key=lambda item: item[1])
    fig = go.Figure(
        go.Bar(
            x=[count for _, count in ordered],
            y=[name.removeprefix("dev.falaj.") for name, _ in ordered],
            orientation="h",
        )
    )
    return _plot("events-by-type", "newest events by type", fig)


def training_loss(losses: Mapping[str, Sequence[tuple[int, float]]]) -> Plot:
    """Each training job's loss by epoch, as its progress events reported it."""
    fig = go.Figure()
    for job, points in sorted(losses.items()):
        fig.add_trace(
            go.Scatter(
                x=[epoch for epoch, _ in points],
                y=[loss for _, loss in points],
                mode="lines+markers",
                name=job,
            )
        )
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="training loss")
    return _plot("training-loss", "training loss by epoch", fig)
