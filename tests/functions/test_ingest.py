"""The ingest function: landed files into Feast, bad rows and bad files quarantined."""

from __future__ import annotations

import contextlib
import http.server
import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml
from cloudevents.conversion import to_binary

from eventing.retry import should_retry
from falaj.auth import Role
from falaj.context import Context
from falaj.demo.data import generate_transactions
from falaj.errors import EventError, ObjectKeyError, ResidencyViolation, StorageError
from falaj.events import (
    DataIngested,
    DataQuality,
    DataRejected,
    EventData,
    EventType,
    ObjectCreated,
    ParsedEvent,
    make_event,
    parse_event,
)
from falaj.features import FeatureStoreClient
from falaj.objects import LANDING_BUCKET, encode_key
from falaj.runtime.processes import free_port
from falaj.settings import PROJECT_ROOT, Settings
from falaj.validation import validate_frame
from functions.ingest.function import IngestFunction
from tests.support.functions import start_function
from tests.support.notifications import AWS_PUT, MINIO_PUT, notification, record

BAD_ROWS = 5
HEADER = (
    b"card_id,event_timestamp,amount,hour,distance_km,card_age_days,tx_count_24h,is_foreign,"
    b"merchant_category,is_fraud\n"
)


class CapturingIngest(IngestFunction):
    """The real function, with its emits kept instead of sent to a broker."""

    def __init__(self) -> None:
        super().__init__(chunk_rows=100)  # small chunks, so files span several
        #: Outcomes (data.ingested / data.rejected), in order.
        self.emitted: list[tuple[EventType, EventData]] = []
        #: The data.quality reports, in order.
        self.quality: list[DataQuality] = []
        self.fail_emits = False

    def emit(self, event_type: EventType, data: EventData, *, subject: str | None = None) -> None:
        if self.fail_emits:
            raise EventError("the broker is down (test)")
        if isinstance(data, DataQuality):
            self.quality.append(data)
        else:
            self.emitted.append((event_type, data))


@contextlib.contextmanager
def running_ingest(home: Path) -> Iterator[CapturingIngest]:
    """One started ``CapturingIngest`` on ``home``, stopped at the end (Feast's start
    costs seconds: the property tests share one across their examples)."""
    started = CapturingIngest()
    started.start(Context.create(Settings(home=home), actor="test"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / ".falaj",
        storage_regions={"s3://eu-bucket": "eu-west-1", "s3://uae-bucket": "me-central-1"},
    )


@pytest.fixture
def function(ctx: Context) -> Iterator[CapturingIngest]:
    started = CapturingIngest()
    started.start(ctx)
    try:
        yield started
    finally:
        started.stop()


def land(ctx: Context, key: str, content: bytes | pd.DataFrame) -> str:
    """Put a file in the landing bucket; its location as ingest names it."""
    path = ctx.paths.landing / key
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, pd.DataFrame):
        content.to_csv(path, index=False)
    else:
        path.write_bytes(content)
    return path.resolve().as_uri()


def delivered(ctx: Context, data: dict[str, Any]) -> ParsedEvent:
    """Notification data as it arrives at the function: in a CloudEvent, parsed."""
    created = ObjectCreated.model_validate(data)
    return parse_event(
        make_event(EventType.OBJECT_CREATED, created, region="me-central-1"), ctx.policy
    )


def created(
    ctx: Context, key: str, version_id: str = "g1", *, bucket: str = LANDING_BUCKET
) -> ParsedEvent:
    """S3's documented notification record, for ``key`` in ``bucket``."""
    return delivered(
        ctx, record(AWS_PUT, bucket=bucket, raw_key=encode_key(key), version_id=version_id)
    )


def offline_files(ctx: Context) -> list[Path]:
    return sorted((ctx.paths.offline / "transactions").rglob("*.parquet"))


def test_good_rows_reach_feast_and_bad_rows_are_quarantined(
    ctx: Context, function: CapturingIngest
) -> None:
    rows = generate_transactions(450, seed=21, cards=40, bad_rows=BAD_ROWS)
    location = land(ctx, "day1.csv", rows)
    function.handle(created(ctx, "day1.csv"))

    ((event_type, data),) = function.emitted
    assert event_type is EventType.DATA_INGESTED
    assert isinstance(data, DataIngested)
    assert (data.rows_total, data.rows_ingested, data.rows_quarantined) == (450, 445, BAD_ROWS)
    assert data.location == location and data.object_version == "g1"

    features = FeatureStoreClient(ctx, function.schema)
    stored = features.labelled_rows()
    assert len(stored) == 445
    good = validate_frame(function.schema, rows).good
    newest = good.sort_values("event_timestamp").groupby("card_id").last()
    cards = sorted(newest.index)[:3]
    online = features.online_features(cards)
    assert online["amount"] == newest.loc[cards, "amount"].tolist()
    assert online["tx_count_24h"] == newest.loc[cards, "tx_count_24h"].tolist()

    assert data.quarantine_location is not None
    lines = [json.loads(line) for line in Path(data.quarantine_location).read_text().splitlines()]
    assert len(lines) == BAD_ROWS
    assert all(set(line) == {"row_number", "reasons", "row"} and line["reasons"] for line in lines)
    broken = rows.reset_index(drop=True)
    for line in lines:
        # row_number counts data rows from 1, across chunks of 100.
        assert line["row"]["card_id"] == _csv_value(broken.loc[line["row_number"] - 1, "card_id"])
    (entry,) = [e for e in ctx.audit.entries() if e["action"] == "data.ingested"]
    assert entry["details"]["rows_quarantined"] == BAD_ROWS


def _csv_value(value: object) -> object:
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("garbage.csv", b"\xff\xfe\x00\x01binary\x00", "cannot be parsed as csv"),
        # One ragged row is quarantined (test_ingest_bad_files.py); all of them, the file.
        ("ragged.csv", HEADER + b"a,1\nb,2,3,4\n", "none of its 2 rows could be split"),
        ("empty.csv", b"", "cannot be parsed as csv"),
        ("columns.csv", b"card_id,amount\na,1\n", "missing columns ['event_timestamp'"),
        ("notes.txt", b"hello", "cannot tell how to read 'notes.txt'"),
    ],
)
def test_a_file_that_cannot_be_read_is_rejected_whole(
    ctx: Context, function: CapturingIngest, name: str, content: bytes, reason: str
) -> None:
    location = land(ctx, name, content)
    function.handle(created(ctx, name))
    ((event_type, data),) = function.emitted
    assert event_type is EventType.DATA_REJECTED
    assert isinstance(data, DataRejected)
    assert reason in data.reason
    assert data.object_version == "g1"  # the notification's version of the object
    assert Path(data.quarantine_location).read_bytes() == content
    (reason_file,) = ctx.paths.quarantine.glob("*.reason.json")
    assert json.loads(reason_file.read_text())["reason"] == data.reason
    assert offline_files(ctx) == []
    (entry,) = [e for e in ctx.audit.entries() if e["action"] == "data.rejected"]
    assert entry["outcome"] == "refused" and entry["resource"] == location


def test_redelivery_of_an_object_version_ingests_nothing(
    ctx: Context, function: CapturingIngest
) -> None:
    land(ctx, "day1.csv", generate_transactions(120, seed=22, cards=10))
    function.handle(created(ctx, "day1.csv"))
    files = offline_files(ctx)
    function.handle(created(ctx, "day1.csv"))  # a new event id, the same object version
    assert offline_files(ctx) == files
    assert len(function.emitted) == 1
    assert len(FeatureStoreClient(ctx, function.schema).labelled_rows()) == 120
    function.handle(created(ctx, "day1.csv", "g2"))  # a new version is new work
    assert len(function.emitted) == 2


def test_a_lost_event_is_sent_on_redelivery_without_ingesting_again(
    ctx: Context, function: CapturingIngest
) -> None:
    land(ctx, "day1.csv", generate_transactions(50, seed=23, cards=10))
    function.fail_emits = True
    with pytest.raises(EventError, match="broker is down"):
        function.handle(created(ctx, "day1.csv"))
    files = offline_files(ctx)
    assert files
    function.fail_emits = False
    function.handle(created(ctx, "day1.csv"))
    ((event_type, data),) = function.emitted
    assert event_type is EventType.DATA_INGESTED
    assert isinstance(data, DataIngested) and data.rows_ingested == 50
    assert offline_files(ctx) == files


def test_aws_and_minio_notifications_are_ingested_by_the_same_function(
    ctx: Context, function: CapturingIngest
) -> None:
    # The fixtures' keys, decoded: "2026/transactions day1.csv" and "... day2.csv".
    day1 = land(ctx, "2026/transactions day1.csv", generate_transactions(60, seed=26, cards=8))
    day2 = land(ctx, "2026/transactions day2.csv", generate_transactions(40, seed=27, cards=8))
    function.handle(delivered(ctx, record(AWS_PUT, bucket=LANDING_BUCKET)))
    minio = notification(MINIO_PUT)  # the whole webhook body, Records and all
    minio["Records"][0]["s3"]["bucket"]["name"] = LANDING_BUCKET
    function.handle(delivered(ctx, minio))
    function.handle(delivered(ctx, minio))  # MinIO delivers again: same ETag, same version

    assert [(t, d.location, getattr(d, "rows_ingested", None)) for t, d in function.emitted] == [
        (EventType.DATA_INGESTED, day1, 60),
        (EventType.DATA_INGESTED, day2, 40),
    ]
    assert len(FeatureStoreClient(ctx, function.schema).labelled_rows()) == 100


@pytest.mark.parametrize(
    ("raw_key", "message"),
    [
        ("../secret.csv", "has a '..' segment"),
        ("2026/..%2F..%2Fsecret.csv", "has a '..' segment"),
        ("%2Fetc%2Fpasswd", "is absolute"),
        ("leak.csv", "outside the bucket's folder"),
    ],
)
def test_keys_that_leave_the_bucket_are_refused_before_a_byte_is_read(
    ctx: Context, function: CapturingIngest, raw_key: str, message: str
) -> None:
    secret = ctx.paths.home / "secret.csv"
    secret.write_bytes(generate_transactions(10, seed=28, cards=2).to_csv(index=False).encode())
    ctx.paths.landing.mkdir(parents=True, exist_ok=True)
    (ctx.paths.landing / "leak.csv").symlink_to(secret)
    event = delivered(ctx, record(AWS_PUT, bucket=LANDING_BUCKET, raw_key=raw_key))
    with pytest.raises(ObjectKeyError, match=message) as refused_error:
        function.handle(event)
    assert "expected" in str(refused_error.value)
    assert function.emitted == [] and offline_files(ctx) == []
    refused = [e for e in ctx.audit.entries() if e["action"] == "storage.refused"]
    assert [e["details"]["reason"] for e in refused] == [str(refused_error.value)]


def test_buckets_outside_the_region_or_this_machine_are_refused(
    ctx: Context, function: CapturingIngest
) -> None:
    with pytest.raises(ResidencyViolation, match="eu-west-1"):
        function.handle(created(ctx, "day1.csv", bucket="eu-bucket"))
    with pytest.raises(StorageError, match=r"reads objects only from its local buckets \(landing"):
        function.handle(created(ctx, "day1.csv", bucket="uae-bucket"))
    with pytest.raises(StorageError, match="does not exist"):
        function.handle(created(ctx, "gone.csv"))
    assert function.emitted == []
    refused = [e for e in ctx.audit.entries() if e["action"] == "policy.refused"]
    assert [e["resource"] for e in refused] == ["s3://eu-bucket/day1.csv"]


def test_columns_marked_pii_are_stored_pseudonymized(tmp_path: Path) -> None:
    repo = tmp_path / "feature_repo"
    (repo / "datasets").mkdir(parents=True)
    dataset = Path("datasets") / "transactions.yaml"
    contract = yaml.safe_load((PROJECT_ROOT / "feature_repo" / dataset).read_text())
    for column in contract["columns"]:
        column["pii"] = column["name"] == "merchant_category"
    (repo / dataset).write_text(yaml.safe_dump(contract))
    ctx = Context.create(Settings(home=tmp_path / ".falaj", feature_repo=repo), actor="test")
    function = CapturingIngest()
    function.start(ctx)
    try:
        assert function.schema.pii_columns == ("merchant_category",)
        rows = generate_transactions(30, seed=25, cards=5)
        land(ctx, "pii.csv", rows)
        function.handle(created(ctx, "pii.csv"))
    finally:
        function.stop()
    stored = pd.concat(pd.read_parquet(p) for p in offline_files(ctx))
    tokens = stored["merchant_category"]
    assert tokens.str.match(r"^pii_[0-9a-f]{32}$").all()
    # The same value gets the same token, so counts per category survive.
    assert sorted(tokens.value_counts().tolist()) == sorted(
        rows["merchant_category"].value_counts().tolist()
    )
    assert (ctx.paths.keys / "pii.key").stat().st_mode & 0o777 == 0o600


@dataclass
class Receiver:
    port: int
    received: queue.Queue[tuple[str, dict[str, Any]]]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A stand-in broker ingress on a free port: keeps each binary CloudEvent it is sent."""
    received: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            received.put((self.headers.get("ce-type", ""), json.loads(body)))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(port=server.server_address[1], received=received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def served(ctx: Context, receiver: Receiver, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The real functions-framework process on functions/ingest/main.py: (url, token)."""
    token = ctx.tokens.issue("ingest-test", Role.SERVICE)
    settings = ctx.settings.model_copy(update={"broker_port": receiver.port, "token": token})
    process, url = start_function("ingest", settings, tmp_path)
    try:
        yield url, token
    finally:
        process.stop()
    assert not process.alive()


def test_served_by_functions_framework(
    ctx: Context, served: tuple[str, str], receiver: Receiver
) -> None:
    url, token = served
    land(ctx, "served.csv", generate_transactions(80, seed=24, cards=10, bad_rows=2))
    auth = {"Authorization": f"Bearer {token}"}

    def post(raw_key: str, headers: dict[str, str]) -> httpx.Response:
        sent = record(AWS_PUT, bucket=LANDING_BUCKET, raw_key=raw_key)
        data = ObjectCreated.model_validate(sent)
        event = make_event(EventType.OBJECT_CREATED, data, region="me-central-1")
        event_headers, body = to_binary(event)
        return httpx.post(url, headers={**event_headers, **headers}, content=body, timeout=60)

    assert post("served.csv", {}).status_code == 401
    assert offline_files(ctx) == []
    escaping = post("..%2F..%2Fkeys%2Ftokens.json", auth)
    # Final: the broker dead-letters it with this reason instead of retrying.
    assert escaping.status_code == 422 and not should_retry(escaping.status_code)
    assert "has a '..' segment" in escaping.json()["error"]
    accepted = post("served.csv", auth)
    assert accepted.status_code == 200, accepted.text
    stored = pd.concat(pd.read_parquet(p) for p in offline_files(ctx))
    assert len(stored) == 78
    assert len(list(ctx.paths.quarantine.glob("*.jsonl"))) == 1
    received = dict([receiver.received.get(timeout=30), receiver.received.get(timeout=30)])
    assert set(received) == {EventType.DATA_QUALITY, EventType.DATA_INGESTED}
    emitted = received[EventType.DATA_INGESTED]
    assert (emitted["rows_ingested"], emitted["rows_quarantined"]) == (78, 2)
    assert received[EventType.DATA_QUALITY]["rows_quarantined"] == 2
    assert receiver.received.empty()
