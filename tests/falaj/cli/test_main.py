from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from falaj.audit import AuditLog
from falaj.auth import Role
from falaj.cli.main import DemoSteps, app, ready_record
from falaj.context import Paths
from falaj.events import EventType
from falaj.runtime.demo import START_PREFIX, STEPS
from falaj.runtime.processes import free_port
from tests.falaj.cli.stand_in import StandIn, write_token

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
    report = json.loads(result.output)
    assert (report["verified"], report["entries"], len(report["head"])) == (True, 3, 64)


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


# -- every command, for scripts ------------------------------------------------------


def _leaves(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """Every command that runs (no group), by its words: ``rollout status``, ``up``..."""
    children = getattr(command, "commands", None)
    if not children:
        yield " ".join(path), command
        return
    for name, child in children.items():
        yield from _leaves(child, (*path, name))


def test_every_command_takes_json() -> None:
    root = typer.main.get_command(app)
    leaves = dict(_leaves(root))
    assert {"up", "down", "demo", "status", "ingest", "train watch", "events replay"} <= set(leaves)
    without = [
        words
        for words, command in leaves.items()
        if not any("--json" in param.opts for param in command.params)
    ]
    assert without == [], f"these commands have no --json: {without}"
    # ... and the shell completion typer adds is there to install.
    root_options = {opt for param in root.params for opt in param.opts}
    assert {"--install-completion", "--show-completion"} <= root_options


def test_up_refuses_a_busy_port_as_json_and_gives_back_the_signal_handler(
    tmp_path: Path,
) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = runner.invoke(
            app,
            ["up", "--home", str(tmp_path / ".falaj"), "--json"],
            env={"FALAJ_BROKER_PORT": str(port), "FALAJ_RAY_ADDRESS": "http://127.0.0.1:1"},
        )
    assert result.exit_code == 1 and result.stdout == ""
    error = json.loads(result.stderr)
    assert f"broker port {port}" in error["error"]
    assert "logs are in" in error["hint"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_up_json_names_the_token_files_never_a_token(tmp_path: Path) -> None:
    paths = Paths(tmp_path / ".falaj")
    for role in Role:
        write_token(paths.home, role)
    state = {"pid": 7, "broker": "http://127.0.0.1:8080", "control": "http://127.0.0.1:8090"}
    record = ready_record(paths, state)
    assert record["tokens"] == {
        str(role): str(paths.keys / f"{role}.token") for role in Role if role is not Role.SERVICE
    }
    assert "token-of" not in json.dumps(record)
    assert (record["status"], record["control"], record["landing"]) == (
        "up",
        "http://127.0.0.1:8090",
        str(paths.landing),
    )


def test_down_stops_falaj_up_by_its_pid(tmp_path: Path) -> None:
    state = tmp_path / ".falaj" / "run" / "platform.json"
    state.parent.mkdir(parents=True)
    # A 'falaj up' stand-in: it records itself, and removes the record on SIGTERM.
    script = (
        "import json, os, pathlib, signal, sys\n"
        "p = pathlib.Path(sys.argv[1])\n"
        "signal.signal(signal.SIGTERM, lambda *_: (p.unlink(), sys.exit(0)))\n"
        "p.write_text(json.dumps({'pid': os.getpid(), 'processes': {}}))\n"
        "print('ready', flush=True)\n"
        "signal.pause()\n"
    )
    up = subprocess.Popen(
        [sys.executable, "-c", script, str(state)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert up.stdout is not None and up.stdout.readline() == "ready\n"
        result = runner.invoke(app, ["down", "--home", str(tmp_path / ".falaj"), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"stopped": True, "pid": up.pid}
        assert up.wait(timeout=30) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    gone = runner.invoke(app, ["down", "--home", str(tmp_path / ".falaj"), "--json"])
    assert gone.exit_code == 1 and "no running platform" in json.loads(gone.stderr)["error"]


def test_down_removes_the_record_of_a_falaj_up_that_is_gone(tmp_path: Path) -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait(timeout=30)
    state = tmp_path / ".falaj" / "run" / "platform.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"pid": ended.pid, "processes": {}}))
    result = runner.invoke(app, ["down", "--home", str(tmp_path / ".falaj"), "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stderr)
    assert error["error"].startswith(f"process {ended.pid} of 'falaj up' is gone")
    assert "'falaj up' starts" in error["hint"]
    assert not state.exists()


def test_the_demo_bar_counts_the_platform_start_as_one_step_then_each_story_step() -> None:
    log = StringIO()
    progress = Progress(console=Console(file=log, width=200), disable=True)
    steps = DemoSteps(progress, story_steps=STEPS, start_prefix=START_PREFIX)
    said = ["start broker", "start router", "land 10 transactions", "train version 1"]
    done = []
    for what in said:
        steps(what)
        done.append(progress.tasks[0].completed)
    assert done == [0, 0, 1, 2]
    assert progress.tasks[0].total == 1 + STEPS
    steps.finish()
    assert progress.tasks[0].completed == 1 + STEPS
    # Each step is a line with its time since the start: the log under the bar.
    lines = log.getvalue().splitlines()
    assert [line.split("s ", 1)[1] for line in lines] == said
    assert all(float(line.split("s ", 1)[0]) >= 0 for line in lines)


def test_audit_show_and_export_answer_as_json(tmp_path: Path) -> None:
    home = _home_with_audit(tmp_path)
    shown = runner.invoke(app, ["audit", "show", "--last", "2", "--home", str(home), "--json"])
    assert shown.exit_code == 0, shown.output
    assert [e["action"] for e in json.loads(shown.stdout)] == [
        "model.registered",
        "model.deployed",
    ]
    exported = runner.invoke(
        app, ["audit", "export", "--action", "model.", "--home", str(home), "--json"]
    )
    assert exported.exit_code == 0, exported.output
    summary = json.loads(exported.stdout)
    assert (summary["exported"], summary["entries"], summary["output"]) == (2, 3, None)
    assert [e["seq"] for e in summary["lines"]] == [2, 3]
    target = tmp_path / "siem.jsonl"
    written = runner.invoke(
        app, ["audit", "export", "-o", str(target), "--home", str(home), "--json"]
    )
    assert written.exit_code == 0, written.output
    assert json.loads(written.stdout)["output"] == str(target)
    assert len(target.read_text().splitlines()) == 3


def test_events_schemas_answers_as_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["events", "schemas", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)["schemas"]
    assert sorted(written) == sorted(str(p) for p in tmp_path.glob("*.json"))


def test_events_replay_reports_each_dead_letter_and_fails_if_one_failed(
    tmp_path: Path, stand_in: StandIn
) -> None:
    home = tmp_path / ".falaj"
    write_token(home, Role.PLATFORM_ADMIN)
    stand_in.route("POST", "/dead-letters/3/replay", lambda _: (200, {"delivery": 41}))
    stand_in.route("POST", "/dead-letters/4/replay", lambda _: (409, {"error": "not replayable"}))
    result = runner.invoke(
        app,
        ["events", "replay", "3", "4", "--home", str(home), "--json"],
        env={"FALAJ_BROKER_URL": stand_in.url},
    )
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "replayed": [{"id": 3, "delivery": 41}],
        "failed": [{"id": 4, "error": "cannot replay dead letter 4 (HTTP 409): not replayable"}],
    }
    error = json.loads(result.stderr)
    assert error["error"] == "1 of 2 dead letters were not replayed"


def test_a_platform_that_does_not_answer_is_named_with_the_fix(tmp_path: Path) -> None:
    home = tmp_path / ".falaj"
    write_token(home, Role.VIEWER)
    result = runner.invoke(
        app,
        ["events", "dead", "--home", str(home), "--json"],
        env={"FALAJ_BROKER_URL": f"http://127.0.0.1:{free_port()}"},
    )
    assert result.exit_code == 1 and result.stdout == ""
    error = json.loads(result.stderr)
    assert "does not answer" in error["error"]
    assert error["hint"].startswith("start the platform with 'falaj up'")
