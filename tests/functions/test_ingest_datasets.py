"""Ingest with several datasets: a file's dataset by its key's folder, records by a setting."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from falaj.context import Context
from falaj.errors import ConfigError, SchemaError
from falaj.events import (
    DataIngested,
    EventData,
    EventType,
    ObjectCreated,
    ParsedEvent,
    StreamRecord,
    make_event,
    parse_event,
)
from falaj.features import FeatureStoreClient
from falaj.objects import LANDING_BUCKET, encode_key
from falaj.settings import PROJECT_ROOT, Settings
from functions.ingest.function import IngestFunction
from tests.support.loans import generate_applications
from tests.support.notifications import AWS_PUT, record

LOANS = """\
dataset: loans
entity: applicant_id
timestamp: applied_at
label: defaulted
columns:
  - {name: applicant_id, dtype: string}
  - {name: applied_at, dtype: timestamp}
  - {name: full_name, dtype: string, pii: true}
  - {name: income, dtype: float, min: 0, min_exclusive: true}
  - {name: loan_amount, dtype: float}
  - {name: term_months, dtype: int}
  - {name: credit_score, dtype: int, min: 300, max: 850}
  - {name: employment, dtype: string}
  - {name: defaulted, dtype: int, min: 0, max: 1}
"""


class CapturingIngest(IngestFunction):
    def __init__(self) -> None:
        super().__init__()
        self.emitted: list[tuple[EventType, EventData]] = []

    def emit(self, event_type: EventType, data: EventData, *, subject: str | None = None) -> None:
        self.emitted.append((event_type, data))

    def outcomes(self) -> list[EventData]:
        return [d for t, d in self.emitted if t is not EventType.DATA_QUALITY]


def two_datasets(tmp_path: Path, **settings: object) -> Context:
    """The project's repository with a loans dataset beside the transactions."""
    repo = tmp_path / "feature_repo"
    shutil.copytree(
        PROJECT_ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__")
    )
    (repo / "datasets" / "loans.yaml").write_text(LOANS)
    values = Settings(home=tmp_path / ".falaj", feature_repo=repo, **settings)  # type: ignore[arg-type]
    return Context.create(values, actor="test")


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return two_datasets(tmp_path)


@pytest.fixture
def function(ctx: Context) -> Iterator[CapturingIngest]:
    started = CapturingIngest()
    started.start(ctx)
    try:
        yield started
    finally:
        started.stop()


def created(ctx: Context, key: str) -> ParsedEvent:
    data = record(AWS_PUT, bucket=LANDING_BUCKET, raw_key=encode_key(key), version_id="v1")
    event = make_event(
        EventType.OBJECT_CREATED, ObjectCreated.model_validate(data), region="me-central-1"
    )
    return parse_event(event, ctx.policy)


def land(ctx: Context, key: str, rows: pd.DataFrame) -> None:
    path = ctx.paths.landing / key
    path.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(path, index=False)


def test_each_file_goes_to_the_dataset_its_folder_names(
    ctx: Context, function: CapturingIngest
) -> None:
    land(ctx, "loans/2026/01/apps.csv", generate_applications(40, seed=1, applicants=10))
    function.handle(created(ctx, "loans/2026/01/apps.csv"))
    [outcome] = function.outcomes()
    assert isinstance(outcome, DataIngested)
    assert (outcome.dataset, outcome.rows_ingested) == ("loans", 40)
    assert outcome.offline_location == str(ctx.paths.offline / "loans")
    assert list((ctx.paths.offline / "transactions").rglob("*.parquet")) == []
    loans = FeatureStoreClient(ctx, function.features_of("loans/x.csv").schema)
    assert len(loans.labelled_rows()) == 40


def test_records_need_a_dataset_when_there_are_several(
    ctx: Context, function: CapturingIngest
) -> None:
    row = {"applicant_id": "app-1", "applied_at": "2026-01-05T10:00:00Z", "income": 1.0}
    event = make_event(
        EventType.RABBITMQ_MESSAGE, StreamRecord.model_validate(row), region="me-central-1"
    )
    with pytest.raises(SchemaError, match="set FALAJ_RECORDS_DATASET") as refused:
        function.handle(parse_event(event, ctx.policy))
    assert refused.value.status == 422  # dead-lettered with its reason, never retried
    assert not (ctx.paths.quarantine / "stream-records.jsonl").exists()


def test_records_go_to_the_dataset_the_setting_names(tmp_path: Path) -> None:
    ctx = two_datasets(tmp_path, records_dataset="loans")
    function = CapturingIngest()
    function.start(ctx)
    try:
        assert function.schema.dataset == "loans"
    finally:
        function.stop()


def test_a_records_dataset_that_is_not_in_the_repository_stops_the_start(tmp_path: Path) -> None:
    ctx = two_datasets(tmp_path, records_dataset="cards")
    with pytest.raises(ConfigError, match=r"no dataset 'cards'.*add datasets/cards\.yaml"):
        CapturingIngest().start(ctx)
