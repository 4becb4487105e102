"""The HTML drift report: self-contained, a plot per column, every name from a file escaped."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from falaj.drift_batch import BatchReport, score_file
from falaj.drift_report import bar_chart, render_html, write_html
from falaj.drift_statistics import DEFAULT_THRESHOLDS
from falaj.errors import StorageError
from falaj.profile import PREDICTION, ReferenceProfile

HOSTILE = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> BatchReport:
    """A shifted feature, and a categorical one whose name and a category are HTML."""
    rng = np.random.default_rng(0)
    profile = ReferenceProfile.from_columns(
        {
            "amount": rng.normal(100.0, 10.0, 1000),
            "hour": rng.uniform(0.0, 24.0, 1000),
            HOSTILE: rng.choice(["<b>bold</b>", "plain"], 1000),
        },
        predictions=rng.uniform(0.0, 1.0, 1000),
    )
    path = tmp_path_factory.mktemp("drift") / "june.parquet"
    pd.DataFrame(
        {
            "amount": rng.normal(130.0, 10.0, 500),
            "hour": rng.uniform(0.0, 24.0, 500),
            HOSTILE: rng.choice(["<b>bold</b>", "plain"], 500),
            PREDICTION: rng.uniform(0.0, 1.0, 500),
        }
    ).to_parquet(path)
    return score_file(profile, path, thresholds=DEFAULT_THRESHOLDS)


def test_the_report_has_a_summary_row_and_a_plot_per_column(report: BatchReport) -> None:
    html = render_html(report, title="Drift of fraud version 3")

    assert html.startswith("<!DOCTYPE html>")
    assert html.count("<svg") == len(report.columns) == 4
    for column in ("amount", "hour", PREDICTION):
        assert f">{column}</a></td>" in html  # its summary row, linked to its plot
    assert "1 of 3 features drifted</strong>: amount." in html
    assert '<td class="drifted">yes</td>' in html and '<td class="stable">no</td>' in html
    assert "(shown, never decides)" in html  # the prediction's verdict
    assert "p50" in html  # the quantile table of a numeric column


def test_names_from_the_file_are_escaped(report: BatchReport) -> None:
    html = render_html(report, title=f"Drift {HOSTILE}")

    assert "<script" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html  # a category label under its bars


def test_the_report_fetches_nothing(report: BatchReport) -> None:
    html = render_html(report, title="Drift")

    assert not re.search(r"<script|<link|@import|\bsrc=|url\(", html)
    # The only URL is the SVG namespace, which is a name, never fetched.
    assert set(re.findall(r"https?://[^\s\"']+", html)) == {"http://www.w3.org/2000/svg"}


def test_write_html_writes_the_file_or_says_why_not(report: BatchReport, tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    write_html(report, target, title="Drift")
    assert "<svg" in target.read_text(encoding="utf-8")

    with pytest.raises(StorageError, match="cannot write the drift report to"):
        write_html(report, tmp_path / "no-such-folder" / "report.html", title="Drift")


def test_bars_are_scaled_to_the_largest_share() -> None:
    chart = bar_chart(["a", "b"], reference=[0.5, 0.5], current=[0.75, 0.25])

    heights = {(b.tooltip.split(":")[0], b.series): b.height for b in chart.bars}
    # The axis tops at 0.8 (the largest share, 0.75, rounded up to a tenth).
    assert heights[("a", "current")] == pytest.approx(160 * 0.75 / 0.8, abs=0.1)
    assert heights[("b", "reference")] == pytest.approx(160 * 0.5 / 0.8, abs=0.1)
    assert [tick.text for tick in chart.gridlines] == ["0%", "40%", "80%"]
    with pytest.raises(ValueError, match="one reference and one current share per label"):
        bar_chart(["a"], reference=[1.0], current=[])
