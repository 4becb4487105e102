"""The training job's command line and its failure path (no Ray needed to fail)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from falaj.audit import AuditLog
from falaj.auth import Role, write_token_file
from falaj.context import Context
from falaj.demo.data import generate_transactions
from falaj.events import EventType, TrainingReason
from falaj.feature_repo import load_repo
from falaj.features import FeatureStoreClient
from falaj.runtime.processes import ManagedProcess, free_port
from falaj.schema import load_schema
from falaj.settings import Settings
from falaj.training_job import JobExit
from falaj.validation import validate_frame
from tests.support.event_sink import EventSink
from training.job import parse_args


def test_arguments_name_the_model_reason_and_job() -> None:
    request = parse_args(["--model", "fraud", "--reason", "drift", "--job-id", "train-fraud-1"])
    assert (request.model, request.reason, request.job_id) == (
        "fraud",
        TrainingReason.DRIFT,
        "train-fraud-1",
    )
    # A first try's Ray Train run is its own; a retry names the lost job's run to resume.
    assert request.run_name == "train-fraud-1"
    retry = parse_args(
        ["--model", "fraud", "--reason", "drift", "--job-id", "j2", "--run-name", "train-fraud-1"]
    )
    assert (retry.job_id, retry.run_name) == ("j2", "train-fraud-1")


def test_an_unknown_reason_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--model", "fraud", "--reason", "boredom", "--job-id", "j"])
    assert exited.value.code == 2
    assert "new-data" in capsys.readouterr().err


def stored(ctx: Context, change: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    """Typed transactions in the offline store, after ``change``: what ingest would leave."""
    schema = load_schema(ctx.settings)
    raw = generate_transactions(400, seed=5, cards=40).astype(str)
    client = FeatureStoreClient(ctx, schema, load_repo(ctx.settings).models_of(schema.dataset))
    client.apply()
    client.write_offline(change(validate_frame(schema, raw).good))


def no_data(ctx: Context) -> None:
    """Nothing ingested at all."""


def one_class(ctx: Context) -> None:
    stored(ctx, lambda rows: rows.assign(is_fraud=0))


def nan_features(ctx: Context) -> None:
    def half_without_amount(rows: pd.DataFrame) -> pd.DataFrame:
        rows = rows.copy()
        rows.loc[rows.index[::2], "amount"] = np.nan
        return rows

    stored(ctx, half_without_amount)


def run_job(settings: Settings, job_id: str, log_path: Path) -> int:
    """Run ``python -m training.job`` as Ray would, and return its exit code."""
    job = ManagedProcess(
        name="training-job",
        argv=[
            sys.executable,
            "-m",
            "training.job",
            "--model",
            "fraud",
            "--reason",
            "manual",
            "--job-id",
            job_id,
        ],
        env={"PATH": "/usr/bin:/bin", **settings.to_env()},
        log_path=log_path,
    ).start()
    try:
        assert job.popen is not None
        return job.popen.wait(timeout=120)
    finally:
        job.stop()


@pytest.mark.parametrize(
    ("seed", "error", "reason"),
    [
        (no_data, "NotEnoughData", "ingest more data"),
        (one_class, "NotEnoughData", "of both classes"),
        (nan_features, "IncompleteFeatures", "(null, NaN or infinite) of a feature (amount"),
    ],
    ids=["no data", "one class", "NaN features"],
)
def test_a_job_that_cannot_train_fails_announces_it_audits_it_and_registers_nothing(
    ctx: Context,
    tmp_path: Path,
    event_sink: EventSink,
    seed: Callable[[Context], None],
    error: str,
    reason: str,
) -> None:
    seed(ctx)
    token = ctx.tokens.issue("training", Role.SERVICE)
    token_file = ctx.paths.keys / "training.token"
    write_token_file(token_file, token)
    settings = ctx.settings.model_copy(
        update={"broker_url": event_sink.url, "token_file": token_file}
    )
    job_id = "train-fraud-empty"
    code = run_job(settings, job_id, tmp_path / "job.log")
    assert code == JobExit.FAILED_ANNOUNCED, (tmp_path / "job.log").read_text()

    events = event_sink.wait_for(
        EventType.TRAINING_STARTED, EventType.TRAINING_FAILED, job_id=job_id
    )
    assert [e.type for e in events] == [EventType.TRAINING_STARTED, EventType.TRAINING_FAILED]
    failed = events[-1].data
    assert failed["model"] == "fraud"
    assert error in failed["reason"] and reason in failed["reason"], failed["reason"]
    # The job presented the token from its file, and never printed it.
    assert {e.authorization for e in events} == {f"Bearer {token}"}
    assert token not in (tmp_path / "job.log").read_text()

    audit = AuditLog(ctx.paths.audit)
    audit.verify()
    [entry] = [e for e in audit.entries() if e["action"] == "training.failed"]
    assert entry["outcome"] == "failed"
    assert entry["details"]["job_id"] == job_id
    assert error in entry["details"]["error"]
    assert not (ctx.paths.registry / "fraud").exists()


def test_a_failure_the_broker_did_not_take_exits_with_its_own_code(
    ctx: Context, tmp_path: Path
) -> None:
    # Nobody listens at the broker's address: the failure is audited, and the
    # exit code tells the launcher to announce it instead.
    settings = ctx.settings.model_copy(update={"broker_url": f"http://127.0.0.1:{free_port()}"})
    code = run_job(settings, "train-fraud-unheard", tmp_path / "job.log")
    assert code == JobExit.FAILED_UNANNOUNCED, (tmp_path / "job.log").read_text()
    [entry] = [e for e in AuditLog(ctx.paths.audit).entries() if e["action"] == "training.failed"]
    assert entry["details"]["job_id"] == "train-fraud-unheard"
