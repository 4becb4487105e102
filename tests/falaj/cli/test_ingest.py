"""``falaj ingest FILE [--wait]``: a file landed for its dataset, and what ingest made of it.

The broker is a stand-in whose event log answers for whatever lies in the
landing folder when it is asked, as the storage source and ingest would: so
the wait ends on the answer about these bytes, with no clock involved.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eventing.storage_source import digest_of
from falaj.auth import Role
from falaj.cli.main import app
from falaj.events import EventType
from tests.falaj.cli.stand_in import StandIn, write_token

runner = CliRunner()
ROWS = "card_id,amount\nc1,12.5\nc2,7.0\n"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / ".falaj"


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "june.csv"
    path.write_text(ROWS)
    return path


def _landed_events(landing: Path, event_type: str) -> list[dict[str, object]]:
    """What the broker's log holds for the files now in ``landing``: ``bad*`` is rejected."""
    events: list[dict[str, object]] = []
    for path in sorted(landing.rglob("*.csv")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        location = path.resolve().as_uri()
        if path.name.startswith("bad") and event_type == EventType.DATA_REJECTED:
            data = {
                "dataset": path.parent.name,
                "location": location,
                "reason": "no column 'timestamp'",
                "quarantine_location": f"/q/{path.parent.name}_{path.name}-sha256_{digest}.orig",
                "object_version": f"sha256:{digest}",
            }
        elif not path.name.startswith("bad") and event_type == EventType.DATA_INGESTED:
            data = {
                "dataset": path.parent.name,
                "location": location,
                "object_version": f"sha256:{digest}",
                "rows_total": 2,
                "rows_ingested": 1,
                "rows_quarantined": 1,
                "quarantine_location": "/q/june.jsonl",
            }
        else:
            continue
        events.append({"id": path.name, "type": str(event_type), "data": data})
    return events


@pytest.fixture
def broker(stand_in: StandIn, home: Path) -> StandIn:
    write_token(home, Role.VIEWER)
    stand_in.route(
        "GET", "/events", lambda q: (200, _landed_events(home / "landing", q["type"][0]))
    )
    return stand_in


def test_a_file_lands_whole_in_its_datasets_folder(home: Path, csv: Path) -> None:
    result = runner.invoke(app, ["ingest", str(csv), "--home", str(home), "--json"])
    assert result.exit_code == 0, result.output
    landed = json.loads(result.stdout)
    target = home.resolve() / "landing" / "transactions" / "june.csv"
    assert landed == {
        "outcome": "landed",
        "dataset": "transactions",  # the feature repository's only dataset
        "path": str(target),
        "location": target.as_uri(),
        "object_version": digest_of(target).version_id,  # the storage source's name
        "copied": True,
        "result": None,
    }
    assert target.read_text() == ROWS
    assert [p.name for p in target.parent.iterdir()] == ["june.csv"]  # no .part left behind

    again = runner.invoke(app, ["ingest", str(csv), "--home", str(home), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["copied"] is False


def test_wait_reports_the_rows_ingested_and_quarantined(
    home: Path, csv: Path, broker: StandIn
) -> None:
    argv = ["ingest", str(csv), "--wait", "--home", str(home)]
    env = {"FALAJ_BROKER_URL": broker.url, "COLUMNS": "200"}
    result = runner.invoke(app, [*argv, "--json"], env=env)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["outcome"] == "ingested"
    assert (answer["result"]["rows_ingested"], answer["result"]["rows_quarantined"]) == (1, 1)

    text = runner.invoke(app, argv, env=env)
    assert text.exit_code == 0, text.output
    assert "ingested 1 of 2 rows; 1 quarantined, with their reasons in /q/june.jsonl" in text.stdout


def test_wait_fails_naming_the_reason_when_the_file_is_rejected(
    home: Path, tmp_path: Path, broker: StandIn
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("no,timestamp\n")
    result = runner.invoke(
        app,
        ["ingest", str(bad), "--wait", "--home", str(home), "--json"],
        env={"FALAJ_BROKER_URL": broker.url},
    )
    assert result.exit_code == 1 and result.stdout == ""
    error = json.loads(result.stderr)
    assert error["error"] == "bad.csv was rejected: no column 'timestamp'"
    assert error["hint"].startswith("the file is kept at /q/transactions_bad.csv-")


def test_an_earlier_answer_about_other_bytes_of_the_same_name_is_not_taken(
    home: Path, csv: Path, broker: StandIn
) -> None:
    target = home / "landing" / "transactions" / "june.csv"
    target.parent.mkdir(parents=True)
    target.write_text("card_id,amount\nold,1\n")
    before = _landed_events(home / "landing", EventType.DATA_INGESTED)
    # The broker knows only the old bytes: a wait for the new ones times out.
    broker.route("GET", "/events", lambda q: (200, before if "ingested" in q["type"][0] else []))
    result = runner.invoke(
        app,
        ["ingest", str(csv), "--wait", "--timeout", "0", "--home", str(home), "--json"],
        env={"FALAJ_BROKER_URL": broker.url},
    )
    assert result.exit_code == 1
    error = json.loads(result.stderr)
    assert error["error"].startswith("no data.ingested or data.rejected for june.csv within 0 s")
    assert "'falaj status'" in error["hint"]


def test_wait_without_a_platform_is_refused_before_anything_lands(home: Path, csv: Path) -> None:
    result = runner.invoke(app, ["ingest", str(csv), "--wait", "--home", str(home), "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stderr)
    assert "no viewer token" in error["error"] and "falaj up" in error["hint"]
    assert not (home / "landing").exists()


def test_an_unknown_dataset_is_refused_naming_the_known_ones(home: Path, csv: Path) -> None:
    result = runner.invoke(
        app, ["ingest", str(csv), "--dataset", "loans", "--home", str(home), "--json"]
    )
    assert result.exit_code == 1
    error = json.loads(result.stderr)
    assert error["error"].startswith("no dataset 'loans' in the feature repository")
    assert (
        error["hint"] == "pass --dataset with one of transactions, or declare datasets/loans.yaml"
    )
