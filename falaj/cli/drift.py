"""``falaj drift``: drift of a model version's inputs, scored offline from a file.

    falaj drift score --reference fraud:3 --data june.parquet
        every profiled feature of the file against version 3's reference profile:
        a table, "N of M features drifted", and an HTML report with a plot per feature
    falaj drift score -r fraud:3 -d june.csv --statistic psi --statistic ks --json
    falaj drift score -r fraud:3 -d june.csv --fail-on-drift      exit 3 on drift (CI)

The profile is read only from a version whose signature verifies, the same
way a server loads the model. Thresholds are ``Settings.drift_thresholds``
(``FALAJ_DRIFT_THRESHOLDS``), the ones the drift function alerts by, so a file
scored here and the same rows seen live get the same verdict.
"""

from __future__ import annotations

import getpass
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from falaj.cli.options import (
    HomeOption,
    JsonOption,
    ModelArgument,
    console,
    counted_bars,
    emit_json,
    err_console,
    fail,
    settings_for,
)
from falaj.drift_batch import FORMATS, BatchReport, score_file
from falaj.drift_report import write_html
from falaj.drift_statistics import STATISTICS, statistic
from falaj.errors import FalajError
from falaj.profile import PREDICTION, ReferenceProfile
from falaj.settings import Settings

drift_app = typer.Typer(
    help="Drift: a model version's reference against a file of its inputs.",
    no_args_is_help=True,
)

#: The exit status of ``--fail-on-drift`` when a feature drifted: not 1 (an
#: error) or 2 (bad usage), so a CI step can tell drift from a broken run.
DRIFT_EXIT_CODE = 3

ReferenceOption = Annotated[
    str,
    typer.Option(
        "--reference", "-r", help="the model version whose profile is the baseline: MODEL:VERSION"
    ),
]
DataOption = Annotated[
    Path,
    typer.Option(
        "--data",
        "-d",
        exists=True,
        dir_okay=False,
        readable=True,
        help=f"the file to score ({', '.join(FORMATS)}); JSON is one object a line",
    ),
]
ReportOption = Annotated[
    Path | None,
    typer.Option(
        "--report", help="where to write the HTML report (default drift-report-MODEL-vN.html)"
    ),
]
StatisticOption = Annotated[
    list[str] | None,
    typer.Option(
        "--statistic",
        "-s",
        help=f"a statistic to score, repeatable: {', '.join(STATISTICS)} (default: all)",
    ),
]
FailOnDriftOption = Annotated[
    bool,
    typer.Option(
        "--fail-on-drift",
        help=f"exit {DRIFT_EXIT_CODE} when any feature drifted (for CI); otherwise drift is a "
        "finding and the exit status is 0",
    ),
]

_REFERENCE = re.compile(r"(?P<model>[^:\s]+):(?P<version>[1-9][0-9]*)")


# -- falaj drift score ---------------------------------------------------------


@drift_app.command("score")
def score(
    reference: ReferenceOption,
    data: DataOption,
    report: ReportOption = None,
    statistics: StatisticOption = None,
    fail_on_drift: FailOnDriftOption = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Score a file's features against a model version's reference profile, offline."""
    model, version = parse_reference(reference)
    target = report or Path.cwd() / f"drift-report-{model}-v{version}.html"
    try:
        settings = settings_for(home)
        # Each statistic once, in the order asked for; an unknown name is refused.
        chosen = tuple(dict.fromkeys(statistic(name).name for name in statistics or STATISTICS))
        profile = _verified_profile(settings, model, version)
        with _progress(as_json=as_json) as bar:
            task = bar.add_task(f"reading {escape(data.name)}", total=None)

            def advance(column: str, done: int, total: int) -> None:
                bar.update(
                    task, description=f"scored {escape(column)}", completed=done, total=total
                )

            scored = score_file(
                profile,
                data,
                statistics=chosen,
                thresholds=settings.drift_thresholds,
                progress=advance,
            )
        write_html(scored, target, title=f"Drift of {model} version {version}: {data.name}")
    except FalajError as exc:
        raise fail(
            str(exc),
            hint="'falaj models list' shows the versions; pass --home to the registry's folder",
        ) from None
    if as_json:
        shown = {"model": model, "version": version, "report": str(target), **scored.to_json()}
        emit_json(shown)
    else:
        _print_summary(scored, target, min_samples=settings.drift_min_samples)
    if fail_on_drift and scored.drifted_features:
        raise typer.Exit(DRIFT_EXIT_CODE)


def parse_reference(reference: str) -> tuple[str, int]:
    """``fraud:3`` -> ("fraud", 3); a clear error for anything else."""
    match = _REFERENCE.fullmatch(reference.strip())
    if match is None:
        raise fail(
            f"--reference {reference!r}: expected MODEL:VERSION with a version number from 1",
            hint="e.g. --reference fraud:3; 'falaj models list' shows the versions",
        )
    return match["model"], int(match["version"])


def _verified_profile(settings: Settings, model: str, version: int) -> ReferenceProfile:
    """The version's profile, read only once its signature verified (a refusal is audited)."""
    from falaj.context import Context
    from falaj.registry import ModelRegistry

    ctx = Context.create(settings, actor=f"cli:{getpass.getuser()}")
    return ModelRegistry(ctx).load_verified(model, version).profile


def _progress(*, as_json: bool) -> Progress:
    # On stderr, so stdout stays the table (or the JSON) alone.
    return counted_bars(
        as_json=as_json,
        transient=True,
    )


def _print_summary(report: BatchReport, target: Path, *, min_samples: int) -> None:
    """The table, the verdict, what was not scored, and where the report is.

    Names come from the file: every one is escaped, or a column named
    ``[red]`` would be read as markup.
    """
    # Only the statistics that scored a column: a file of numbers shows no chi-square.
    shown = [n for n in report.statistics if any(n in c.values for c in report.columns)]
    table = Table()
    # Names fold rather than end in "...": a cut name is no name at all.
    table.add_column("column", overflow="fold")
    table.add_column("kind")
    for header in ("rows", "missing", *shown, "drifted"):
        table.add_column(header, justify="right", overflow="fold")
    for column in report.columns:
        cells = []
        for name in shown:
            value = column.values.get(name)
            text = "" if value is None else f"{value.value:.3g}"
            if value is not None and value.p_value is not None:
                text += f"\np={value.p_value:.2g}"
            cells.append(f"[red]{text}[/red]" if column.drifted.get(name) else text)
        if column.name == PREDICTION:
            verdict = "shown only"  # prediction drift never decides (drift_policy)
        elif not column.values:
            verdict = "no values"
        else:
            verdict = "[bold red]yes[/bold red]" if column.any_drifted else "no"
        table.add_row(
            escape(column.name), column.kind, str(column.rows), str(column.missing), *cells, verdict
        )
    console.print(table)
    drifted = report.drifted_features
    console.print(
        f"[bold]{len(drifted)} of {len(report.features)} features drifted[/bold]"
        + (f": {escape(', '.join(drifted))}" if drifted else "")
    )
    if report.missing_features:
        console.print(f"not in the file (not scored): {escape(', '.join(report.missing_features))}")
    if report.unknown_columns:
        console.print(
            f"not in the profile (not scored): {escape(', '.join(report.unknown_columns))}"
        )
    if report.rows < min_samples:
        err_console.print(
            f"[yellow]note:[/yellow] {report.rows} rows, fewer than drift_min_samples "
            f"({min_samples}): too few to tell drift from noise, the drift function would not alert"
        )
    console.print(f"report: {escape(str(target))}")


# -- falaj drift status --------------------------------------------------------


@drift_app.command("status")
def status(
    model: ModelArgument,
    version: Annotated[
        int | None, typer.Option(help="one version only; left out, every version")
    ] = None,
    last: Annotated[int, typer.Option(help="how many recent windows to show")] = 10,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """The drift time series of a model: each scored window, its worst scores, its alert."""
    from falaj.context import Paths
    from falaj.drift_history import DriftHistory

    settings = settings_for(home)
    history = DriftHistory(Paths(settings.resolved_home).drift)
    try:
        windows = history.windows(model, version, last=last)
        alerts = {v: history.last_alert(model, v) for v in history.versions(model)}
    finally:
        history.close()
    if as_json:
        emit_json(
            {
                "model": model,
                "thresholds": settings.drift_thresholds,
                "windows": [w.to_json() for w in windows],
                "last_alert": alerts,
            }
        )
        return
    if not windows:
        raise fail(
            f"no drift window of {model!r} scored yet in {settings.resolved_home}",
            hint="the drift function scores windows of logged predictions while 'falaj up' "
            "runs; 'falaj drift score' scores a file now",
        )
    table = Table(title=f"{escape(model)}: last {len(windows)} windows", title_justify="left")
    for column in ("closed", "version", "rows", *STATISTICS, "drifted", "alert"):
        table.add_column(column)
    for window in windows:
        worst = {
            name: max(
                (
                    values[name]
                    for feature, values in window.scores.items()
                    if name in values and feature != PREDICTION
                ),
                key=lambda v: (
                    -v[1] if statistic(name).decides_by_p_value and v[1] is not None else v[0]
                ),
                default=None,
            )
            for name in STATISTICS
        }
        table.add_row(
            window.window_end[:19],
            str(window.version),
            str(window.rows),
            *(_cell(name, worst[name]) for name in STATISTICS),
            escape(", ".join(window.drifted_features())),
            "yes" if window.alerted else escape(window.held_back),
        )
    console.print(table)
    console.print(
        "worst feature per statistic; p-values for "
        + ", ".join(n for n, s in STATISTICS.items() if s.decides_by_p_value)
        + "; thresholds "
        + ", ".join(f"{k} {v:g}" for k, v in settings.drift_thresholds.items())
    )


def _cell(name: str, value: tuple[float, float | None, bool] | None) -> str:
    if value is None:
        return ""
    shown = value[1] if statistic(name).decides_by_p_value and value[1] is not None else value[0]
    text = f"{shown:.3g}"
    return f"[red]{text}[/red]" if value[2] else text
