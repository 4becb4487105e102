"""A batch drift report as one self-contained HTML file: a summary table and a plot per column.

The file must open anywhere the data may be looked at, which in-region is
often a machine with no way out: so no script, no CDN, no fonts to fetch;
plots are inline SVG drawn here (grouped bars of the reference's share next
to the file's, per bin or category). Every name in it comes from a data file
or a profile made from one, so the template escapes everything (autoescape)
and no string is ever marked safe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import jinja2

from falaj.drift_batch import BatchReport, ColumnDrift
from falaj.drift_statistics import statistic
from falaj.errors import StorageError
from falaj.profile import PREDICTION

#: Plot geometry, in SVG user units (pixels at 100%).
PLOT_HEIGHT = 160
BAR_WIDTH = 14
GROUP_GAP = 12
MARGIN_LEFT = 48
MARGIN_TOP = 12
#: Room under the plot for labels written at 45 degrees.
MARGIN_BOTTOM = 96
#: Characters of a bin or category label shown under its bars (the whole label is in the tooltip).
LABEL_CHARS = 18


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    #: "reference" or "current", the bar's CSS class.
    series: str
    tooltip: str


@dataclass(frozen=True)
class Tick:
    """A label: under a group of bars, or a gridline's share beside the axis."""

    x: float
    y: float
    text: str
    tooltip: str = ""


@dataclass(frozen=True)
class BarChart:
    """Where every bar, label and gridline of one plot goes; the template only draws them."""

    width: float
    height: float
    plot_left: float
    plot_right: float
    bars: tuple[Bar, ...]
    labels: tuple[Tick, ...]
    gridlines: tuple[Tick, ...]


def bar_chart(
    labels: Sequence[str], reference: Sequence[float], current: Sequence[float]
) -> BarChart:
    """Grouped bars, the reference's share then the file's, one group per bin or category."""
    if not len(labels) == len(reference) == len(current):
        raise ValueError(
            f"expected one reference and one current share per label, got {len(labels)} "
            f"labels, {len(reference)} reference and {len(current)} current shares"
        )
    top = _axis_top(max((*reference, *current, 0.0)))
    group = 2 * BAR_WIDTH + GROUP_GAP
    bottom = MARGIN_TOP + PLOT_HEIGHT
    bars: list[Bar] = []
    ticks: list[Tick] = []
    for i, label in enumerate(labels):
        left = MARGIN_LEFT + GROUP_GAP / 2 + i * group
        for j, (series, share) in enumerate((("reference", reference[i]), ("current", current[i]))):
            height = PLOT_HEIGHT * share / top
            bars.append(
                Bar(
                    x=_px(left + j * BAR_WIDTH),
                    y=_px(bottom - height),
                    width=BAR_WIDTH - 1,
                    height=_px(height),
                    series=series,
                    tooltip=f"{label}: {series} {share:.2%}",
                )
            )
        short = (
            label
            if len(label) <= LABEL_CHARS
            else label[: LABEL_CHARS - 1] + "\N{HORIZONTAL ELLIPSIS}"
        )
        ticks.append(Tick(x=_px(left + BAR_WIDTH), y=bottom + 12, text=short, tooltip=label))
    right = MARGIN_LEFT + max(len(labels), 1) * group
    gridlines = tuple(
        Tick(x=MARGIN_LEFT - 6, y=_px(bottom - PLOT_HEIGHT * f), text=f"{top * f:.0%}")
        for f in (0.0, 0.5, 1.0)
    )
    return BarChart(
        width=right + 8,
        height=bottom + MARGIN_BOTTOM,
        plot_left=MARGIN_LEFT,
        plot_right=right,
        bars=tuple(bars),
        labels=tuple(ticks),
        gridlines=gridlines,
    )


def render_html(report: BatchReport, *, title: str) -> str:
    """The report as one HTML document (what ``write_html`` writes)."""
    environment = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    environment.filters["number"] = _number
    environment.filters["p_value"] = _p_value
    return environment.from_string(_TEMPLATE).render(
        title=title,
        report=report,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        charts={column.name: _chart(column) for column in report.columns},
        prediction=PREDICTION,
        by_p_value={name for name in report.statistics if statistic(name).decides_by_p_value},
    )


def write_html(report: BatchReport, path: Path, *, title: str) -> None:
    """Write the report to ``path``; ``StorageError`` when it cannot be written."""
    html = render_html(report, title=title)
    try:
        path.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise StorageError(f"cannot write the drift report to {path}: {exc}") from exc


def _chart(column: ColumnDrift) -> BarChart:
    shares = column.shares
    return bar_chart(shares.labels, shares.reference, shares.current)


def _px(value: float) -> float:
    # A tenth of a pixel is finer than any screen; shorter numbers, a smaller file.
    return round(value, 1)


def _axis_top(largest: float) -> float:
    """Top of the axis: the largest share rounded up to a tenth (a 20th below 0.2)."""
    step = 0.05 if largest <= 0.2 else 0.1
    return min(1.0, max(step, math.ceil(largest / step - 1e-9) * step))


def _number(value: float | None) -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.4g}"


def _p_value(value: float | None) -> str:
    return "" if value is None else f"p = {_number(value)}"


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #1f2328; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin: 2em 0 0.3em; }
.meta, .p, td.shown { color: #57606a; }
.p { font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; }
td.name, th.name { text-align: left; }
td.drifted, span.drifted { background: #ffebe9; color: #a40e26; font-weight: 600; }
td.stable { background: #dafbe1; color: #116329; }
.legend span { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; }
svg text { font: 11px system-ui, sans-serif; fill: #57606a; }
rect.reference, .legend .reference { fill: #8c959f; background: #8c959f; }
rect.current, .legend .current { fill: #0969da; background: #0969da; }
line.grid { stroke: #d0d7de; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p class="meta">{{ report.path }} &middot; {{ report.rows }} rows
&middot; generated {{ generated }}</p>
{% set drifted = report.drifted_features %}
<p><strong>{{ drifted | length }} of {{ report.features | length }} features drifted</strong>
{%- if drifted %}: {{ drifted | join(", ") }}{% endif %}.
Thresholds:
{% for name, threshold in report.thresholds.items() %}
{{ name }} {% if name in by_p_value %}p &lt;{% else %}&gt;{% endif %} {{ threshold }}
{%- if not loop.last %}, {% endif %}
{% else %}
none (the scores are shown; nothing decides)
{% endfor %}
</p>
{% if report.missing_features %}
<p>Profiled features not in the file (not scored): {{ report.missing_features | join(", ") }}.</p>
{% endif %}
{% if report.unknown_columns %}
<p>Columns the profile does not know (not scored): {{ report.unknown_columns | join(", ") }}.</p>
{% endif %}
<table>
<thead><tr>
<th class="name">column</th><th class="name">kind</th><th>rows</th><th>missing</th>
{% for name in report.statistics %}<th>{{ name }}</th>{% endfor %}
<th>drifted</th>
</tr></thead>
<tbody>
{% for column in report.columns %}
<tr>
<td class="name"><a href="#column-{{ loop.index }}">{{ column.name }}</a></td>
<td class="name">{{ column.kind }}</td>
<td>{{ column.rows }}</td>
<td>{{ column.missing }}</td>
{% for name in report.statistics %}
{% set value = column.values.get(name) %}
<td{% if column.drifted.get(name) %} class="drifted"{% endif %}>
{%- if value is none %}&ndash;{% else %}{{ value.value | number }}
{%- if value.p_value is not none %} <span class="p">({{ value.p_value | p_value }})</span>
{%- endif %}{% endif %}</td>
{% endfor %}
{% if column.name == prediction %}
<td class="shown">{{ "yes" if column.any_drifted else "no" }} (shown, never decides)</td>
{% elif not column.values %}
<td class="shown">no values</td>
{% elif column.any_drifted %}
<td class="drifted">yes</td>
{% else %}
<td class="stable">no</td>
{% endif %}
</tr>
{% endfor %}
</tbody>
</table>
<p class="legend">Plots:
<span class="reference"></span>reference (training) <span class="current"></span>this file</p>
{% for column in report.columns %}
{% set chart = charts[column.name] %}
<h2 id="column-{{ loop.index }}">{{ column.name }} <span class="meta">({{ column.kind }})</span>
{% if column.any_drifted %} <span class="drifted">drifted</span>{% endif %}</h2>
<p class="meta">{{ column.rows }} values scored, {{ column.missing }} missing.
{% for name, value in column.values.items() %}
{{ name }} {{ value.value | number }}
{%- if value.p_value is not none %} ({{ value.p_value | p_value }}){% endif %}
{%- if column.drifted.get(name) %} <span class="drifted">past {{ report.thresholds[name] }}</span>
{%- endif %}
{%- if not loop.last %} &middot;{% endif %}
{% endfor %}
</p>
<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{{ chart.width }}"
 height="{{ chart.height }}" viewBox="0 0 {{ chart.width }} {{ chart.height }}">
<title>{{ column.name }}: the share of each
{{ "category" if column.kind == "categorical" else "bin" }}</title>
{% for tick in chart.gridlines %}
<line class="grid" x1="{{ chart.plot_left }}" x2="{{ chart.plot_right }}"
 y1="{{ tick.y }}" y2="{{ tick.y }}"/>
<text x="{{ tick.x }}" y="{{ tick.y + 4 }}" text-anchor="end">{{ tick.text }}</text>
{% endfor %}
{% for bar in chart.bars %}
<rect class="{{ bar.series }}" x="{{ bar.x }}" y="{{ bar.y }}" width="{{ bar.width }}"
 height="{{ bar.height }}"><title>{{ bar.tooltip }}</title></rect>
{% endfor %}
{% for label in chart.labels %}
<text x="{{ label.x }}" y="{{ label.y }}" text-anchor="end"
 transform="rotate(-45 {{ label.x }} {{ label.y }})"><title>{{ label.tooltip }}</title>
{{- label.text }}</text>
{% endfor %}
</svg>
{% if column.quantiles %}
<table>
<thead><tr><th class="name">quantile</th>
{% for key in column.quantiles %}<th>{{ key }}</th>{% endfor %}
</tr></thead>
<tbody>
<tr><td class="name">reference</td>
{% for pair in column.quantiles.values() %}<td>{{ pair[0] | number }}</td>{% endfor %}
</tr>
<tr><td class="name">this file</td>
{% for pair in column.quantiles.values() %}<td>{{ pair[1] | number }}</td>{% endfor %}
</tr>
</tbody>
</table>
{% endif %}
{% endfor %}
</body>
</html>
"""
