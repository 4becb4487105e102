from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from falaj.audit import AuditLog
from falaj.cli.main import app
from falaj.events import EventType

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
