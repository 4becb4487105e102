"""``falaj train``: the training launcher's runs, read from its store.

    falaj train status [MODEL]     every run, newest last, a text bar per epoch, what waits
    falaj train watch [MODEL]      a live bar per running run until every one has ended

Both read ``<home>/training/jobs.db`` (``falaj.training_runs``), which the
launcher writes as the jobs report their stage, epoch and loss; neither
creates it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    Progress,
    TaskID,
)
from rich.table import Table

from falaj.cli.options import (
    HomeOption,
    JsonOption,
    OptionalModelArgument,
    console,
    counted_bars,
    emit_json,
    err_console,
    fail,
    settings_for,
)
from falaj.context import Paths
from falaj.errors import FalajError
from falaj.training_runs import DB_FILE, TrainingJobs, TrainingRun

train_app = typer.Typer(
    help="Training runs: what runs, how far it came, and what waits.", no_args_is_help=True
)

#: Cells of the text progress bar in ``falaj train status``.
BAR_WIDTH = 20
#: Ray's status of a job that ended as it should; any other end fails ``train watch``.
SUCCEEDED = "SUCCEEDED"


def progress_bar(epoch: int, epochs: int, width: int = BAR_WIDTH) -> str:
    """``[#######-------------]  7/20`` for a run that trains; empty before it knows its epochs."""
    if epochs <= 0:
        return ""
    done = min(epoch, epochs)
    filled = round(width * done / epochs)
    return f"[{'#' * filled}{'-' * (width - filled)}] {done:>{len(str(epochs))}}/{epochs}"


@train_app.command("status")
def train_status(
    model: OptionalModelArgument = None,
    home: HomeOption = None,
    limit: Annotated[int, typer.Option(help="newest runs to show per model")] = 10,
    as_json: JsonOption = False,
) -> None:
    """The launcher's training runs, newest last, with a progress bar, and what waits."""
    directory = Paths(settings_for(home).resolved_home).training
    if not (directory / DB_FILE).exists():  # reading must not create the launcher's state
        if as_json:
            emit_json({})
        else:
            console.print("no training runs (the training launcher has launched none here)")
        return
    try:
        with TrainingJobs(directory) as jobs:
            runs = jobs.runs(model)
            models = sorted(
                m for m in {run.model for run in runs} | set(jobs.models()) if model in (None, m)
            )
            pending = {m: jobs.pending(m) for m in models}
    except (FalajError, OSError) as exc:
        raise fail(
            f"cannot read the training runs in {directory}: {exc}",
            hint="check the folder's permissions, or pass --home to the platform's folder",
        ) from None
    by_model = {m: [run for run in runs if run.model == m][-limit:] for m in models}
    if as_json:
        shown = {}
        for m in models:
            waiting = pending[m]
            shown[m] = {
                "runs": [asdict(run) for run in by_model[m]],
                "pending": None if waiting is None else asdict(waiting),
            }
        emit_json(shown)
        return
    if not models:
        console.print("no training runs" + (f" for {model!r}" if model else ""))
        return
    for name in models:
        table = Table(title=f"training runs of {name}", title_justify="left")
        for column in ("job", "reason", "status", "stage", "progress", "loss", "try", "note"):
            table.add_column(column)
        for run in by_model[name]:
            table.add_row(
                run.job_id,
                str(run.reason) + (" (urgent)" if run.urgent else ""),
                run.status + (f", {run.announced}" if run.announced else ""),
                "" if run.stage is None else str(run.stage),
                escape(progress_bar(run.epoch, run.epochs)),
                "" if run.train_loss is None else f"{run.train_loss:.4f}",
                str(run.attempt),
                (run.message or "")[:80],
            )
        console.print(table)
        waiting = pending[name]
        if waiting is not None:
            console.print(
                f"  waiting: {waiting.reason}{' (urgent)' if waiting.urgent else ''}, "
                f"{waiting.requests} request(s) merged"
                + (f", resumes run {waiting.run_name}" if waiting.run_name else "")
            )


# -- falaj train watch -------------------------------------------------------------


def follow(
    jobs: TrainingJobs,
    model: str | None,
    *,
    seen: Callable[[list[TrainingRun]], None],
    pause: Callable[[], None],
    timeout_s: float | None = None,
) -> list[TrainingRun]:
    """Read the runs until every run that was running has ended; return them as they ended.

    A run that starts while others are followed (a retry, a second model) is
    followed too. ``seen`` gets the followed runs after every read; ``pause``
    waits between reads. Raises ``FalajError`` after ``timeout_s``.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    followed: dict[str, TrainingRun] = {}
    while True:
        for run in jobs.runs(model):
            if run.active or run.job_id in followed:
                followed[run.job_id] = run
        runs = list(followed.values())
        seen(runs)
        if not any(run.active for run in runs):
            return runs
        if deadline is not None and time.monotonic() > deadline:
            still = ", ".join(run.job_id for run in runs if run.active)
            raise FalajError(f"{still} still running after {timeout_s:g} s")
        pause()


class RunBars:
    """One bar per followed run: its epochs done of its epochs, its stage and last loss.

    Without a terminal (``bars`` disabled), each change is one line of text
    instead, so a CI log still shows how far the runs came.
    """

    def __init__(self, progress: Progress, *, log: bool) -> None:
        self.progress = progress
        self.log = log
        self._tasks: dict[str, TaskID] = {}
        self._last: dict[str, str] = {}

    def __call__(self, runs: list[TrainingRun]) -> None:
        for run in runs:
            text = describe(run)
            if run.job_id not in self._tasks:
                self._tasks[run.job_id] = self.progress.add_task("", total=None)
            self.progress.update(
                self._tasks[run.job_id],
                # the bar shows the epochs; the text says the rest
                description=escape(describe(run, epochs=False)),
                completed=min(run.epoch, run.epochs) if run.epochs else 0,
                total=run.epochs or None,
            )
            if self.log and self._last.get(run.job_id) != text:
                err_console.print(escape(text), highlight=False)
            self._last[run.job_id] = text


def describe(run: TrainingRun, *, epochs: bool = True) -> str:
    """``train-fraud-1 (fraud): RUNNING, training, epoch 3/20, loss 0.2500``: a run in a line."""
    parts = [run.status]
    if run.stage is not None:
        parts.append(str(run.stage))
    if epochs and run.epochs:
        parts.append(f"epoch {min(run.epoch, run.epochs)}/{run.epochs}")
    if run.train_loss is not None:
        parts.append(f"loss {run.train_loss:.4f}")
    if not run.active and run.message:
        parts.append(run.message[:80])
    return f"{run.job_id} ({run.model}): {', '.join(parts)}"


@train_app.command("watch")
def train_watch(
    model: OptionalModelArgument = None,
    home: HomeOption = None,
    interval: Annotated[
        float, typer.Option(min=0.0, help="seconds between reads of the runs")
    ] = 1.0,
    timeout: Annotated[
        float | None, typer.Option(min=0.0, help="give up after this many seconds")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """A live progress bar per running training run, until every one has ended.

    Exits 1 when a run it followed did not succeed; with --json, prints the
    runs as they ended.
    """
    directory = Paths(settings_for(home).resolved_home).training
    if not (directory / DB_FILE).exists():
        runs: list[TrainingRun] = []
    else:
        progress = counted_bars(
            as_json=as_json,
        )
        show = RunBars(progress, log=progress.disable and not as_json)
        try:
            with TrainingJobs(directory) as jobs, progress:
                runs = follow(
                    jobs, model, seen=show, pause=lambda: time.sleep(interval), timeout_s=timeout
                )
        except FalajError as exc:
            raise fail(
                str(exc),
                hint="the launcher updates the runs while 'falaj up' runs; check it with "
                "'falaj status', or watch longer with --timeout",
            ) from None
    failed = [run for run in runs if run.status != SUCCEEDED]
    if as_json:
        emit_json({"runs": [asdict(run) for run in runs]})
    elif not runs:
        console.print("no training run is running" + (f" for {model!r}" if model else ""))
    else:
        for run in runs:
            console.print(escape(describe(run)), highlight=False)
    if failed:
        raise typer.Exit(1)
