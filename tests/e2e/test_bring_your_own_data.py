"""The README's "Bring your own data", step by step, on a second dataset: loan applications.

The dataset and model files are read from the README itself, so the README
cannot drift from what works. Each step runs the real component: the ingest
function, Feast, the training launcher and the training job on the shared Ray
head (one run, a logistic regression), the registry, the rollout function and
the router with the KServe predictor it starts.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from pydantic import SecretStr
from ray.job_submission import JobStatus
from typer.testing import CliRunner

from falaj.auth import Role, write_token_file
from falaj.cli.main import app
from falaj.context import Context
from falaj.deployments import DeploymentStore
from falaj.events import (
    DataIngested,
    DataQuality,
    DataRejected,
    EventData,
    EventType,
    InferenceLogged,
    ModelDeployed,
    ModelRegistered,
    ObjectCreated,
    ParsedEvent,
    make_event,
    parse_event,
)
from falaj.feature_repo import load_repo
from falaj.features import FeatureStoreClient
from falaj.function import CloudEventFunction
from falaj.objects import LANDING_BUCKET, encode_key
from falaj.registry import ModelRegistry
from falaj.runtime.processes import free_port
from falaj.settings import PROJECT_ROOT, Settings
from falaj.training_runs import TrainingRun
from falaj.validation import validate_frame
from functions.ingest.function import IngestFunction
from functions.rollout.function import RolloutFunction
from functions.training_launcher import TrainingLauncherFunction
from inference.session import CPU
from tests.inference.conftest import BrokerStandIn, wait_until
from tests.support.event_sink import EventSink
from tests.support.loans import generate_applications
from tests.support.notifications import AWS_PUT, record
from tests.support.ray_jobs import RayHead, wait_for_job
from tests.support.router import kill_leftovers, start_router_process
from training.lineage import code_commit

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

MODEL = "loan_default"
ROWS, BAD_ROWS = 1200, 6
#: A fenced YAML block whose first line names the file of the feature repository it is.
FILE_BLOCK = re.compile(r"```yaml\n# (feature_repo/[\w/]+\.yaml)\n(.*?)```", re.DOTALL)
runner = CliRunner()


def readme_files() -> dict[str, str]:
    """The files "Bring your own data" asks a user to add, by path, as the README shows them."""
    text = (PROJECT_ROOT / "README.md").read_text()
    section = text[text.index("## Bring your own data") :]
    section = section[: section.index("\n## ", 1)]
    return dict(FILE_BLOCK.findall(section))


class Captured:
    """What the in-process functions emit, kept instead of sent to a broker."""

    def __init__(self) -> None:
        self.events: list[tuple[EventType, EventData]] = []

    def of(self, event_type: EventType) -> list[EventData]:
        return [data for kind, data in self.events if kind is event_type]


class CapturingIngest(IngestFunction):
    def __init__(self, captured: Captured) -> None:
        super().__init__()
        self.captured = captured

    def emit(self, event_type: EventType, data: EventData, *, subject: str | None = None) -> None:
        self.captured.events.append((event_type, data))


class CapturingRollout(RolloutFunction):
    def __init__(self, captured: Captured) -> None:
        super().__init__()
        self.captured = captured

    def emit(self, event_type: EventType, data: EventData, *, subject: str | None = None) -> None:
        self.captured.events.append((event_type, data))


@contextlib.contextmanager
def started(function: CloudEventFunction, ctx: Context) -> Iterator[None]:
    function.start(ctx)
    try:
        yield
    finally:
        function.stop()


def event(ctx: Context, event_type: EventType, data: EventData) -> ParsedEvent:
    return parse_event(make_event(event_type, data, region=ctx.settings.region), ctx.policy)


def landed(ctx: Context, key: str) -> ParsedEvent:
    """S3's notification record of ``key`` in the landing bucket, as ingest receives it."""
    created = record(AWS_PUT, bucket=LANDING_BUCKET, raw_key=encode_key(key), version_id="v1")
    return event(ctx, EventType.OBJECT_CREATED, ObjectCreated.model_validate(created))


@pytest.fixture
def feature_repo(tmp_path: Path) -> Path:
    """Steps 1 and 2: the project's feature repository plus the README's dataset and model."""
    repo = tmp_path / "feature_repo"
    ignored = shutil.ignore_patterns("data", "__pycache__")
    shutil.copytree(PROJECT_ROOT / "feature_repo", repo, ignore=ignored)
    files = readme_files()
    assert sorted(files) == [
        "feature_repo/datasets/loans.yaml",
        "feature_repo/models/loan_default.yaml",
    ], "the README's 'Bring your own data' should show one dataset file and one model file"
    for path, body in files.items():
        (tmp_path / path).write_text(body)
    return repo


@pytest.fixture
def broker() -> Iterator[BrokerStandIn]:
    """The broker the router logs predictions to."""
    receiver = BrokerStandIn().start()
    try:
        yield receiver
    finally:
        receiver.stop()


def test_loan_applications_go_through_the_whole_loop(
    tmp_path: Path,
    feature_repo: Path,
    ray_head: RayHead,
    event_sink: EventSink,
    broker: BrokerStandIn,
) -> None:
    settings = Settings(
        home=tmp_path / ".falaj",
        feature_repo=feature_repo,
        ray_address=ray_head.address,
        ray_token_file=ray_head.token_file,
        broker_url=event_sink.url,
        router_port=free_port(),
    )
    service = Context.create(settings, actor="test").tokens.issue("services", Role.SERVICE)
    settings = settings.model_copy(update={"token": SecretStr(service)})
    ctx = Context.create(settings, actor="test")
    repo = load_repo(settings)
    spec, loans = repo.model(MODEL), repo.dataset("loans")

    # -- 3. check the repository: both datasets and both models, with their Feast names
    checked = runner.invoke(
        app, ["features", "check", "--json"], env={"FALAJ_FEATURE_REPO": str(feature_repo)}
    )
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.output)
    assert sorted(report["datasets"]) == ["loans", "transactions"]
    assert report["datasets"]["loans"] | {"models": [MODEL]} == {
        "entity": "applicant_id",
        "timestamp": "applied_at",
        "label": "defaulted",
        "pii": ["full_name"],
        "landing": "landing/loans/",
        "feature_view": "loans_features",
        "push_source": "loans_push",
        "models": [MODEL],
    }
    assert report["models"][MODEL] == {
        "dataset": "loans",
        "family": "logistic_regression",
        "hidden": [],
        "features": ["income", "loan_amount", "term_months", "credit_score"],
        "label": "defaulted",
        "feature_service": "loan_default_model",
    }

    # -- 4. land a file in the dataset's folder, and one outside any; ingest both
    applications = generate_applications(ROWS, seed=3, bad_rows=BAD_ROWS)
    folder = ctx.paths.landing / "loans"
    folder.mkdir(parents=True)
    applications.to_csv(folder / "applications-1.csv", index=False)
    applications.head(20).to_csv(ctx.paths.landing / "stray.csv", index=False)
    captured = Captured()
    ingest = CapturingIngest(captured)
    with started(ingest, ctx):
        ingest.handle(landed(ctx, "loans/applications-1.csv"))
        ingest.handle(landed(ctx, "stray.csv"))
    [ingested] = captured.of(EventType.DATA_INGESTED)
    assert isinstance(ingested, DataIngested)
    assert (ingested.dataset, ingested.rows_total, ingested.rows_quarantined) == (
        "loans",
        ROWS,
        BAD_ROWS,
    )
    assert ingested.offline_location == str(ctx.paths.offline / "loans")
    [quality] = captured.of(EventType.DATA_QUALITY)
    assert isinstance(quality, DataQuality) and quality.dataset == "loans"
    assert set(quality.columns["full_name"].model_dump(exclude_defaults=True)) == {"null_rate"}
    [stray] = captured.of(EventType.DATA_REJECTED)
    assert isinstance(stray, DataRejected)
    assert "cannot tell which dataset 'stray.csv' belongs to" in stray.reason
    assert "land it as e.g. 'loans/stray.csv'" in stray.reason
    assert (
        Path(stray.quarantine_location).read_bytes()
        == (ctx.paths.landing / "stray.csv").read_bytes()
    )
    assert ingested.quarantine_location is not None
    quarantined = Path(ingested.quarantine_location).read_text().splitlines()
    assert len(quarantined) == BAD_ROWS and all(json.loads(q)["reasons"] for q in quarantined)

    stored = pd.concat(pd.read_parquet(p) for p in (ctx.paths.offline / "loans").rglob("*.parquet"))
    assert len(stored) == ROWS - BAD_ROWS
    # PII never reaches the stores in the clear.
    assert stored["full_name"].str.match(r"^pii_[0-9a-f]{32}$").all()
    assert not set(stored["full_name"]) & set(applications["full_name"])

    # -- Feast: online through the model's feature service, and a point-in-time training set
    good = validate_frame(loans, applications).good
    assert len(good) == ROWS - BAD_ROWS
    store = FeatureStoreClient(ctx, loans, (spec,))
    newest = good.sort_values("applied_at").groupby("applicant_id").last()
    some = sorted(newest.index)[:5]
    online = store.online_features(some, spec)
    assert list(online) == ["applicant_id", *spec.features]
    for name in spec.features:
        assert online[name] == newest.loc[some, name].tolist(), name
    training = store.training_frame(spec)
    assert training.dropped.count == 0, training.dropped.reason
    frame = training.frame
    assert list(frame.columns) == ["applicant_id", "applied_at", "defaulted", *spec.features]
    # Each application gets its features as of its own time, not its applicant's newest.
    repeat = good["applicant_id"].duplicated(keep=False)
    assert repeat.sum() > 100, "expected applicants who applied more than once"
    keys = ["applicant_id", "applied_at"]
    joined = frame.merge(good, on=keys, suffixes=("", "_landed"), validate="one_to_one")
    assert len(joined) == len(good)
    for name in (*spec.features, "defaulted"):
        assert (joined[name] == joined[f"{name}_landed"]).all(), name

    # -- 5. data.ingested of loans trains loan_default (and nothing else) on Ray
    jobs = ray_head.client()
    launcher = TrainingLauncherFunction()
    launcher.start(ctx)
    runs: list[TrainingRun] = []
    try:
        launcher.handle(event(ctx, EventType.DATA_INGESTED, ingested))
        runs = launcher.jobs.runs(MODEL)
        assert launcher.jobs.runs("fraud") == []
        [run] = runs
        assert wait_for_job(jobs, run.job_id) == JobStatus.SUCCEEDED
    finally:
        launcher.stop()
        for submitted in runs:
            if not jobs.get_job_status(submitted.job_id).is_terminal():
                jobs.stop_job(submitted.job_id)
    registry = ModelRegistry(ctx)
    version = registry.get(MODEL, 1)
    assert version.feature_names == spec.features
    assert version.metrics["auc"] > 0.75, version.metrics
    lineage = version.lineage
    assert (lineage["dataset"], lineage["family"], lineage["feature_service"]) == (
        "loans",
        "logistic_regression",
        "loan_default_model",
    )
    assert lineage["train_config"]["hidden"] == []
    assert lineage["train_config"]["learning_rate"] == 0.05
    assert lineage["rows_used"] == ROWS - BAD_ROWS
    # Where its data came from: the rows, the definition they were read through, the code.
    assert re.fullmatch(r"[0-9a-f]{64}", lineage["training_set_sha256"])
    assert lineage["feature_view"]["name"] == "loans_features"
    assert re.fullmatch(r"[0-9a-f]{64}", lineage["feature_view"]["sha256"])
    assert lineage["offline_location"].startswith("file://")
    assert lineage["code"]["commit"] == code_commit()["commit"] != "unknown"
    announced = event_sink.wait_for(EventType.MODEL_REGISTERED, job_id=run.job_id)
    [registered] = [r.data for r in announced if r.type == EventType.MODEL_REGISTERED]

    # -- rollout serves version 1 as the model's stable version
    rollout = CapturingRollout(captured)
    with started(rollout, ctx):
        rollout.handle(
            event(ctx, EventType.MODEL_REGISTERED, ModelRegistered.model_validate(registered))
        )
    [deployed] = captured.of(EventType.MODEL_DEPLOYED)
    assert isinstance(deployed, ModelDeployed)
    assert (deployed.model, deployed.stable_version, deployed.canary_version) == (MODEL, 1, None)
    with DeploymentStore(ctx) as deployments:
        assert deployments.get("fraud") is None

    # -- the router serves it under its name; predict with an applicant's online features
    reference = ort.InferenceSession(registry.load_verified(MODEL, 1).onnx_bytes, providers=[CPU])
    applicant = {name: float(online[name][0]) for name in spec.features}
    inputs = np.array([[applicant[name] for name in spec.features]], dtype=np.float32)
    expected = float(reference.run(["probability"], {"input": inputs})[0][0][0])
    router = start_router_process(
        settings.model_copy(update={"broker_url": broker.url}), ctx.paths.logs / "router.log"
    )
    predictors: set[int] = set()
    try:
        user = ctx.tokens.issue("analyst", Role.DATA_SCIENTIST)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{settings.router_port}",
            headers={"Authorization": f"Bearer {user}"},
            timeout=30.0,
        ) as client:
            ready = f"/v2/models/{MODEL}/ready"
            wait_until(lambda: client.get(ready).status_code == 200, 90, f"{MODEL} v1 served")
            status = client.get(f"/v2/models/{MODEL}").json()["status"]
            predictors.update(int(s["pid"]) for s in status.values() if s.get("pid"))
            answer = client.post(f"/v1/models/{MODEL}:predict", json={"instances": [applicant]})
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-falaj-model-version"] == "1"
            assert answer.json()["predictions"][0] == pytest.approx(expected, rel=1e-5)

        # The README's command, with a token file as 'falaj up' writes one.
        write_token_file(
            ctx.paths.keys / f"{Role.ML_ENGINEER}.token",
            ctx.tokens.issue("local-ml-engineer", Role.ML_ENGINEER),
        )
        cli_env = {
            "FALAJ_HOME": str(ctx.paths.home),
            "FALAJ_FEATURE_REPO": str(feature_repo),
            "FALAJ_ROUTER_PORT": str(settings.router_port),
        }
        predicted = runner.invoke(
            app, ["predict", "--model", MODEL, json.dumps(applicant), "--json"], env=cli_env
        )
        assert predicted.exit_code == 0, predicted.output
        assert json.loads(predicted.output)["probabilities"] == [pytest.approx(expected, rel=1e-5)]

        # Both predictions were logged for drift scoring, inputs named by the model's features.
        wait_until(lambda: len(broker.received()) == 2, 30, "both predictions logged")
        logged = [InferenceLogged.model_validate(e.get_data()) for e in broker.received()]
        assert {(e.model, e.version) for e in logged} == {(MODEL, 1)}
        assert all(list(e.inputs) == list(spec.features) for e in logged)
    finally:
        router.stop()
        leftovers = kill_leftovers(predictors)
    assert leftovers == [], "the router left predictor processes running"
