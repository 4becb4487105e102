"""The training job's command line and its failure path (no Ray needed to fail)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from falaj.audit import AuditLog
from falaj.auth import Role, write_token_file
from falaj.context import Context
from falaj.events import EventType, TrainingReason
from falaj.runtime.processes import ManagedProcess
from tests.support.event_sink import EventSink
from training.job import EXIT_FAILED, parse_args


def test_arguments_name_the_model_reason_and_job() -> None:
    request = parse_args(["--model", "fraud", "--reason", "drift", "--job-id", "train-fraud-1"])
    assert (request.model, request.reason, request.job_id) == (
        "fraud",
        TrainingReason.DRIFT,
        "train-fraud-1",
    )


def test_an_unknown_reason_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--model", "fraud", "--reason", "boredom", "--job-id", "j"])
    assert exited.value.code == 2
    assert "new-data" in capsys.readouterr().err


def test_a_job_without_data_fails_announces_it_and_audits_it(
    ctx: Context, tmp_path: Path, event_sink: EventSink
) -> None:
    token = ctx.tokens.issue("training", Role.SERVICE)
    token_file = ctx.paths.keys / "training.token"
    write_token_file(token_file, token)
    settings = ctx.settings.model_copy(
        update={"broker_url": event_sink.url, "token_file": token_file}
    )
    job_id = "train-fraud-empty"
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
        log_path=tmp_path / "job.log",
    ).start()
    try:
        assert job.popen is not None
        code = job.popen.wait(timeout=120)
    finally:
        job.stop()
    assert code == EXIT_FAILED, job.tail()

    events = event_sink.wait_for(
        EventType.TRAINING_STARTED, EventType.TRAINING_FAILED, job_id=job_id
    )
    assert [e.type for e in events] == [EventType.TRAINING_STARTED, EventType.TRAINING_FAILED]
    failed = events[-1].data
    assert failed["model"] == "fraud"
    assert "NotEnoughData" in failed["reason"] and "ingest more data" in failed["reason"]
    # The job presented the token from its file, and never printed it.
    assert {e.authorization for e in events} == {f"Bearer {token}"}
    assert token not in (tmp_path / "job.log").read_text()

    audit = AuditLog(ctx.paths.audit)
    audit.verify()
    [entry] = [e for e in audit.entries() if e["action"] == "training.failed"]
    assert entry["outcome"] == "failed"
    assert entry["details"]["job_id"] == job_id
    assert "NotEnoughData" in entry["details"]["error"]
    assert not (ctx.paths.registry / "fraud").exists()
