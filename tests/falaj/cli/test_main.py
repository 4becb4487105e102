from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from falaj.audit import AuditLog
from falaj.cli.main import app, progress_bar
from falaj.context import Paths
from falaj.events import EventType, TrainingReason, TrainingStage
from falaj.training_runs import TrainingJobs, TrainingRequest

runner = CliRunner()


def _home_with_audit(tmp_path: Path) -> Path:
    home = tmp_path / ".falaj"
    log = AuditLog(home / "audit")
    for action in ("data.ingested", "model.registered", "model.deployed"):
        log.record(action, actor="test", resource="fraud", region="me-central-1")
    return home


def test_audit_verify_passes_on_an_intact_log(tmp_path: Path) -> None:
    home = _home_with_audit(tmp_path)
    result = runner.invoke(app, ["audit", "verify", "--home", str(home), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"verified": True, "entries": 3}


def test_audit_verify_fails_on_a_tampered_log(tmp_path: Path) -> None:
    home = _home_with_audit(tmp_path)
    path = home / "audit" / "audit.jsonl"
    path.write_text(path.read_text().replace("model.deployed", "model.promoted"))
    result = runner.invoke(app, ["audit", "verify", "--home", str(home)])
    assert result.exit_code == 1
    assert "line 3 was edited" in result.output


def test_events_schemas_writes_the_registry(tmp_path: Path) -> None:
    result = runner.invoke(app, ["events", "schemas", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert {p.stem for p in tmp_path.glob("*.json")} == {str(t) for t in EventType}


def test_down_without_a_platform_says_so(tmp_path: Path) -> None:
    result = runner.invoke(app, ["down", "--home", str(tmp_path / ".falaj")])
    assert result.exit_code == 1
    assert "no running platform" in result.output


def test_features_check_names_every_problem_of_the_repository(tmp_path: Path) -> None:
    (tmp_path / "datasets").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "datasets" / "loans.yaml").write_text(
        "dataset: loans\nentity: id\ntimestamp: at\nlabel: y\ncolumns:\n"
        "  - {name: id, dtype: string}\n  - {name: at, dtype: timestamp}\n"
        "  - {name: y, dtype: int}\n  - {name: x, dtype: float}\n"
    )
    (tmp_path / "models" / "risk.yaml").write_text(
        "model: risk\ndataset: loans\nentity: id\nlabel: y\nfeatures: [x, z]\nfamily: mlp\n"
    )
    result = runner.invoke(app, ["features", "check"], env={"FALAJ_FEATURE_REPO": str(tmp_path)})
    assert result.exit_code == 1
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "model 'risk': feature 'z' is not a column of dataset 'loans'" in said


# -- falaj models ------------------------------------------------------------------


def _home_with_models(tmp_path: Path) -> Path:
    """Two fraud versions: 1 in production, 2 a 10% canary."""
    from falaj.context import Context
    from falaj.deployments import DeploymentStore, TrafficSplit
    from falaj.settings import Settings
    from tests.support.models import register

    home = tmp_path / ".falaj"
    ctx = Context.create(Settings(home=home), actor="test")
    register(ctx, [0.01, 0.5, 0.01, 0.01, 0.5, 0.8])
    register(ctx, [0.02, 0.4, 0.01, 0.02, 0.6, 0.7])
    with DeploymentStore(ctx) as deployments:
        deployments.set(
            TrafficSplit(model="fraud", stable_version=1, canary_version=2, canary_percent=10)
        )
    return home


def test_models_list_shows_every_version_and_what_it_serves(tmp_path: Path) -> None:
    home = _home_with_models(tmp_path)
    result = runner.invoke(app, ["models", "list", "--home", str(home), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["model"], r["version"], r["serving"]) for r in rows] == [
        ("fraud", 1, "production (90%)"),
        ("fraud", 2, "canary (10%)"),
    ]
    assert all(len(r["digest"]) == 64 and r["metrics"] == {"auc": 0.9} for r in rows)
    assert [r["aliases"] for r in rows] == [["production"], ["canary"]]
    table = runner.invoke(app, ["models", "list", "--home", str(home)])
    assert table.exit_code == 0
    assert "production" in table.output and "canary" in table.output  # wrapped at 80 columns


def test_models_show_and_lineage_answer_for_a_version_or_the_latest(tmp_path: Path) -> None:
    home = _home_with_models(tmp_path)
    shown = runner.invoke(app, ["models", "show", "fraud", "--home", str(home), "--json"])
    assert shown.exit_code == 0, shown.output
    latest = json.loads(shown.output)
    assert (latest["version"], latest["serving"], latest["region"]) == (
        2,
        "canary (10%)",
        "me-central-1",
    )
    first = runner.invoke(
        app, ["models", "lineage", "fraud", "-v", "1", "--home", str(home), "--json"]
    )
    assert first.exit_code == 0, first.output
    assert json.loads(first.output) == {
        "model": "fraud",
        "version": 1,
        "training_job_id": "test",
    }


@pytest.mark.parametrize(("alias", "version"), [("production", 1), ("canary", 2)])
def test_a_version_can_be_named_by_its_alias(tmp_path: Path, alias: str, version: int) -> None:
    home = _home_with_models(tmp_path)
    shown = runner.invoke(
        app, ["models", "show", "fraud", "-v", alias, "--home", str(home), "--json"]
    )
    assert shown.exit_code == 0, shown.output
    found = json.loads(shown.output)
    assert (found["version"], found["aliases"]) == (version, [alias])


def test_an_unknown_alias_names_the_aliases_the_model_has(tmp_path: Path) -> None:
    home = _home_with_models(tmp_path)
    refused = runner.invoke(
        app,
        ["models", "show", "fraud", "-v", "staging", "--home", str(home)],
        env={"COLUMNS": "200"},
    )
    assert refused.exit_code == 1
    assert "production (v1), canary (v2)" in refused.output


def test_models_of_an_unknown_model_or_version_say_what_exists(tmp_path: Path) -> None:
    home = _home_with_models(tmp_path)
    unknown = runner.invoke(app, ["models", "show", "loans", "--home", str(home)])
    assert unknown.exit_code == 1
    assert "'loans'" in unknown.output and "fraud" in unknown.output
    missing = runner.invoke(app, ["models", "lineage", "fraud", "-v", "9", "--home", str(home)])
    assert missing.exit_code == 1 and "9" in missing.output


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
