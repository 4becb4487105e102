"""``falaj drift score``: a file against a registered version's profile, from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner, Result

from falaj.cli.drift import DRIFT_EXIT_CODE
from falaj.cli.main import app
from falaj.context import Context
from tests.support.models import FEATURES, WEIGHTS_V1, register, sample_rows

# Wide enough for the table's every column on one line.
runner = CliRunner(env={"COLUMNS": "160"})


@pytest.fixture
def version(ctx: Context) -> int:
    return register(ctx, WEIGHTS_V1)


def data_file(path: Path, *, amount_factor: float = 1.0) -> Path:
    """Rows like the profile's, with ``amount`` multiplied (drift when not 1)."""
    rows = sample_rows(600, seed=11)
    frame = pd.DataFrame({name: rows[:, j] for j, name in enumerate(FEATURES)})
    frame["amount"] *= amount_factor
    frame["prediction"] = np.linspace(0.0, 1.0, len(frame))
    frame["note"] = "x"  # a column the profile does not know
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return path


def drift(ctx: Context, *args: str) -> Result:
    return runner.invoke(app, ["drift", "score", *args, "--home", str(ctx.settings.home)])


def test_score_prints_the_verdict_writes_the_report_and_exits_0_on_drift(
    ctx: Context, version: int, tmp_path: Path
) -> None:
    data = data_file(tmp_path / "june.csv", amount_factor=5.0)
    report = tmp_path / "out.html"
    result = drift(
        ctx, "--reference", f"fraud:{version}", "--data", str(data), "--report", str(report)
    )

    assert result.exit_code == 0, result.output  # drift is a finding, not a failure
    assert "1 of 6 features drifted: amount" in result.output
    assert "not in the profile (not scored): note" in result.output
    assert f"report: {report}" in result.output.replace("\n", "")
    for feature in FEATURES:
        assert feature in result.output  # a row of the table
    html = report.read_text()
    assert "<svg" in html and "Drift of fraud version 1: june.csv" in html


def test_the_report_defaults_to_the_current_folder(
    ctx: Context, version: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = drift(ctx, "-r", "fraud:1", "-d", str(data_file(tmp_path / "june.parquet")))

    assert result.exit_code == 0, result.output
    assert "0 of 6 features drifted" in result.output
    assert (tmp_path / "drift-report-fraud-v1.html").is_file()


def test_json_output_parses(ctx: Context, version: int, tmp_path: Path) -> None:
    data = data_file(tmp_path / "june.parquet", amount_factor=5.0)
    result = drift(
        ctx, "-r", "fraud:1", "-d", str(data), "--report", str(tmp_path / "r.html"), "--json",
        "--statistic", "psi", "--statistic", "ks",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert (shown["model"], shown["version"], shown["report"]) == (
        "fraud",
        1,
        str(tmp_path / "r.html"),
    )
    assert shown["drifted_features"] == ["amount"]
    assert shown["statistics"] == ["psi", "ks"]
    assert shown["unknown_columns"] == ["note"]
    assert set(shown["columns"][0]["statistics"]) == {"psi", "ks"}


def test_fail_on_drift_exits_3_only_on_drift(ctx: Context, version: int, tmp_path: Path) -> None:
    report = str(tmp_path / "r.html")
    shifted = data_file(tmp_path / "shifted.parquet", amount_factor=5.0)
    steady = data_file(tmp_path / "steady.parquet")

    result = drift(ctx, "-r", "fraud:1", "-d", str(shifted), "--report", report, "--fail-on-drift")
    assert result.exit_code == DRIFT_EXIT_CODE == 3, result.output
    result = drift(ctx, "-r", "fraud:1", "-d", str(steady), "--report", report, "--fail-on-drift")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("fraud", "--reference 'fraud': expected MODEL:VERSION"),
        ("fraud:v1", "--reference 'fraud:v1': expected MODEL:VERSION"),
        ("fraud:0", "expected MODEL:VERSION with a version number from 1"),
        ("fraud:9", "model 'fraud' has no version 9; known versions: 1"),
        ("aml:1", "no model 'aml' in the registry"),
    ],
)
def test_a_bad_reference_says_what_was_expected(
    ctx: Context, version: int, tmp_path: Path, reference: str, message: str
) -> None:
    result = drift(ctx, "-r", reference, "-d", str(data_file(tmp_path / "june.parquet")))

    assert result.exit_code == 1
    assert message in " ".join(result.output.split()), result.output


def test_a_profile_that_fails_verification_is_not_read(
    ctx: Context, version: int, tmp_path: Path
) -> None:
    profile = ctx.paths.registry / "fraud" / "1" / "profile.json"
    profile.write_text(profile.read_text().replace('"rows": 300', '"rows": 301'))
    result = drift(ctx, "-r", "fraud:1", "-d", str(data_file(tmp_path / "june.parquet")))

    assert result.exit_code == 1
    assert "profile.json" in result.output
    refused = [e for e in ctx.audit.entries() if e["action"] == "model.refused"]
    assert refused and refused[-1]["resource"] == "model/fraud/1"


def test_an_unknown_statistic_or_file_type_is_refused(
    ctx: Context, version: int, tmp_path: Path
) -> None:
    data = str(data_file(tmp_path / "june.parquet"))
    result = drift(ctx, "-r", "fraud:1", "-d", data, "--statistic", "mmd")
    assert result.exit_code == 1 and "unknown drift statistic 'mmd'" in result.output

    sheet = tmp_path / "june.xlsx"
    sheet.write_bytes(b"")
    result = drift(ctx, "-r", "fraud:1", "-d", str(sheet))
    assert result.exit_code == 1 and "expected a file ending in .parquet" in result.output
