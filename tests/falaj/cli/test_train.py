"""``falaj train status`` and ``falaj train watch``: the launcher's runs, read from its store."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from falaj.cli import train
from falaj.cli.main import app
from falaj.cli.train import RunBars, follow, progress_bar
from falaj.context import Paths
from falaj.errors import FalajError
from falaj.events import TrainingReason, TrainingStage
from falaj.training_runs import TrainingJobs, TrainingRequest, TrainingRun

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / ".falaj"


@pytest.fixture
def jobs(home: Path) -> Iterator[TrainingJobs]:
    with TrainingJobs(Paths(home.resolve()).training) as store:
        yield store


def _launch(jobs: TrainingJobs, job_id: str, model: str = "fraud") -> None:
    request = TrainingRequest(model=model, reason=TrainingReason.DRIFT)
    jobs.record_launch(job_id, request, limit=2)
    jobs.update_status(job_id, "RUNNING")


def test_train_status_shows_each_run_with_its_progress_and_what_waits(tmp_path: Path) -> None:
    home = tmp_path / ".falaj"
    with TrainingJobs(Paths(home.resolve()).training) as jobs:
        jobs.record_launch(
            "train-fraud-1", TrainingRequest(model="fraud", reason=TrainingReason.DRIFT), limit=1
        )
        jobs.record_progress(
            "train-fraud-1", stage=TrainingStage.TRAINING, epoch=6, epochs=20, train_loss=0.25
        )
        jobs.add_pending(TrainingRequest(model="fraud", reason=TrainingReason.SCHEDULE, requests=3))
    table = runner.invoke(app, ["train", "status", "--home", str(home)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "train-fraud-1" in table.output
    assert progress_bar(6, 20) in table.output
    assert "waiting: schedule, 3 request(s) merged" in table.output

    shown = runner.invoke(app, ["train", "status", "fraud", "--home", str(home), "--json"])
    assert shown.exit_code == 0, shown.output
    [run] = json.loads(shown.output)["fraud"]["runs"]
    assert (run["job_id"], run["epoch"], run["epochs"], run["stage"]) == (
        "train-fraud-1",
        6,
        20,
        "training",
    )
    none = runner.invoke(app, ["train", "status", "credit", "--home", str(home)])
    assert none.exit_code == 0 and "no training runs for 'credit'" in none.output


@pytest.mark.parametrize(
    ("epoch", "epochs", "bar"),
    [(0, 0, ""), (0, 4, "[--------] 0/4"), (1, 4, "[##------] 1/4"), (9, 4, "[########] 4/4")],
)
def test_a_progress_bar_fills_with_the_epochs_done(epoch: int, epochs: int, bar: str) -> None:
    assert progress_bar(epoch, epochs, width=8) == bar


def test_follow_shows_a_bar_per_running_run_until_every_one_has_ended(
    jobs: TrainingJobs,
) -> None:
    _launch(jobs, "train-fraud-1")
    _launch(jobs, "train-fraud-2")
    # What the launcher writes between two reads, one change per pause.
    changes: list[Callable[[], None]] = [
        lambda: jobs.record_progress(
            "train-fraud-1", stage=TrainingStage.TRAINING, epoch=2, epochs=4, train_loss=0.5
        ),
        lambda: jobs.record_progress(
            "train-fraud-1", stage=TrainingStage.TRAINING, epoch=4, epochs=4, train_loss=0.25
        ),
        lambda: jobs.update_status("train-fraud-1", "SUCCEEDED"),
        lambda: jobs.update_status("train-fraud-2", "FAILED", "out of memory"),
    ]
    progress = Progress(console=Console(file=StringIO()), disable=True)
    bars = RunBars(progress, log=False)
    seen: list[list[tuple[str, float, float | None]]] = []

    def show(runs: list[TrainingRun]) -> None:
        bars(runs)
        seen.append([(t.description, t.completed, t.total) for t in progress.tasks])

    ended = follow(jobs, None, seen=show, pause=lambda: changes.pop(0)())
    assert changes == []
    assert [(r.job_id, r.status) for r in ended] == [
        ("train-fraud-1", "SUCCEEDED"),
        ("train-fraud-2", "FAILED"),
    ]
    first = [(completed, total) for _, completed, total in (s[0] for s in seen)]
    assert first == [(0, None), (2, 4), (4, 4), (4, 4), (4, 4)]
    assert seen[-1][1][0] == "train-fraud-2 (fraud): FAILED, out of memory"
    assert seen[2][0][0] == "train-fraud-1 (fraud): RUNNING, training, loss 0.2500"


def test_follow_gives_up_after_its_timeout(jobs: TrainingJobs) -> None:
    _launch(jobs, "train-fraud-1")
    with pytest.raises(FalajError, match="train-fraud-1 still running after 0 s"):
        follow(jobs, None, seen=lambda _: None, pause=lambda: None, timeout_s=0)


class _Clock:
    """``time`` for ``falaj train watch``: each pause ends the run as the launcher would."""

    def __init__(self, end: Callable[[], None]) -> None:
        self.end = end
        self.monotonic = time.monotonic

    def sleep(self, _: float) -> None:
        self.end()


def test_watch_exits_1_when_a_run_it_followed_failed(
    home: Path, jobs: TrainingJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    _launch(jobs, "train-fraud-1")
    monkeypatch.setattr(
        train, "time", _Clock(lambda: jobs.update_status("train-fraud-1", "FAILED", "lost"))
    )
    result = runner.invoke(app, ["train", "watch", "--home", str(home), "--json"])
    assert result.exit_code == 1, result.output
    [run] = json.loads(result.stdout)["runs"]
    assert (run["job_id"], run["status"], run["message"]) == ("train-fraud-1", "FAILED", "lost")
    # Without a terminal, each change is a line on stderr; the outcome goes to stdout.
    _launch(jobs, "train-fraud-2")
    monkeypatch.setattr(
        train, "time", _Clock(lambda: jobs.update_status("train-fraud-2", "SUCCEEDED"))
    )
    text = runner.invoke(app, ["train", "watch", "--home", str(home)], env={"COLUMNS": "200"})
    assert text.exit_code == 0, text.output
    assert text.stderr.splitlines() == [
        "train-fraud-2 (fraud): RUNNING",
        "train-fraud-2 (fraud): SUCCEEDED",
    ]
    assert text.stdout == "train-fraud-2 (fraud): SUCCEEDED\n"


def test_watch_with_nothing_running_ends_at_once(home: Path, jobs: TrainingJobs) -> None:
    result = runner.invoke(app, ["train", "watch", "--home", str(home), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == {"runs": []}
    timed_out = runner.invoke(
        app, ["train", "watch", "--home", str(home), "--json", "--timeout", "0"]
    )
    assert timed_out.exit_code == 0  # nothing runs: nothing to wait for
    _launch(jobs, "train-fraud-1")
    waited = runner.invoke(app, ["train", "watch", "--home", str(home), "--json", "--timeout", "0"])
    assert waited.exit_code == 1
    error = json.loads(waited.stderr)
    assert error["error"] == "train-fraud-1 still running after 0 s"
    assert "--timeout" in error["hint"]
