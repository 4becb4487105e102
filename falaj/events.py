"""The event catalog: every CloudEvent type Falaj emits, with its ``data`` model.

One place lists each ``type``, the ``source`` that emits it and a pydantic model
for its ``data``; the JSON Schemas (the schema registry) are exported from it.
Every event carries the ``dataregion`` extension; ``parse_event`` refuses one
whose region the residency policy does not allow.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from cloudevents.http import CloudEvent
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from falaj.errors import EventError
from falaj.objects import decode_key
from falaj.problems import validation_problems
from falaj.residency import Boundary, ResidencyPolicy

SPECVERSION = "1.0"
REGION_EXTENSION = "dataregion"


class EventType(StrEnum):
    OBJECT_CREATED = "dev.falaj.storage.object.created"
    DATA_INGESTED = "dev.falaj.data.ingested"
    DATA_REJECTED = "dev.falaj.data.rejected"
    DATA_QUALITY = "dev.falaj.data.quality"
    TRAINING_REQUESTED = "dev.falaj.training.requested"
    TRAINING_STARTED = "dev.falaj.training.started"
    TRAINING_PROGRESS = "dev.falaj.training.progress"
    TRAINING_COMPLETED = "dev.falaj.training.completed"
    TRAINING_FAILED = "dev.falaj.training.failed"
    MODEL_REGISTERED = "dev.falaj.model.registered"
    MODEL_DEPLOYED = "dev.falaj.model.deployed"
    ROLLOUT_REQUESTED = "dev.falaj.rollout.requested"
    INFERENCE_LOGGED = "dev.falaj.inference.logged"
    INFERENCE_OUTCOME = "dev.falaj.inference.outcome"
    DRIFT_DETECTED = "dev.falaj.drift.detected"
    # Knative's source types, kept as Knative names them so that the same
    # Triggers match on a cluster and locally.
    RABBITMQ_MESSAGE = "dev.knative.rabbitmq.event"
    KAFKA_RECORD = "dev.knative.kafka.event"
    PING = "dev.knative.sources.ping"


class EventData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class S3Record(BaseModel):
    """Part of an S3 event notification record, in S3's own field names.

    S3 adds fields with each ``eventVersion`` (2.1 to 2.6 so far) and MinIO
    adds its own (``source``, ``contentType``, ``userMetadata``): unknown fields
    are kept, not refused, so a real notification validates as it was sent.
    The fields Falaj reads are declared and typed. Fields S3 leaves out are
    left out when serialized too, rather than sent as ``null``.
    """

    model_config = ConfigDict(
        extra="allow",
        frozen=True,
        validate_by_alias=True,
        validate_by_name=True,
        serialize_by_alias=True,
    )

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        return {name: value for name, value in dumped.items() if value is not None}


class S3Identity(S3Record):
    principal_id: str | None = Field(default=None, alias="principalId")


class S3Bucket(S3Record):
    name: str = Field(min_length=1)
    arn: str | None = Field(default=None, description="arn:aws:s3:::<name>")
    owner_identity: S3Identity | None = Field(default=None, alias="ownerIdentity")


class S3Object(S3Record):
    key: str = Field(min_length=1, description="the object key, URL-encoded as S3 sends it")
    size: int = Field(ge=0)
    e_tag: str = Field(alias="eTag", min_length=1, description="MD5 hex of a single-part upload")
    version_id: str | None = Field(
        default=None, alias="versionId", description="absent in an unversioned bucket"
    )
    sequencer: str | None = Field(
        default=None, description="hex; a later event for the same key has a greater one"
    )
    content_type: str | None = Field(default=None, alias="contentType", description="MinIO's")


class S3Entity(S3Record):
    s3_schema_version: str | None = Field(default=None, alias="s3SchemaVersion")
    configuration_id: str | None = Field(default=None, alias="configurationId")
    bucket: S3Bucket
    object: S3Object


#: ``ObjectCreated:Put`` from S3, ``s3:ObjectCreated:Put`` from MinIO.
_OBJECT_CREATED = re.compile(r"^(s3:)?ObjectCreated:[A-Za-z]+$")


class ObjectCreated(S3Record, EventData):
    """An object was created in a bucket: one S3 (or MinIO) event notification record.

    The local storage source emits the same record for a file in its landing
    folder, so the functions take S3 and MinIO notifications unchanged. A
    notification body with a one-record ``Records`` list is accepted as that record.
    """

    # Pydantic merges the bases' configs with EventData's ``extra="forbid"`` last;
    # restate S3Record's so that unknown S3 fields are kept here too.
    model_config = ConfigDict(**S3Record.model_config)

    event_version: str = Field(alias="eventVersion", description="e.g. 2.1")
    event_source: str = Field(alias="eventSource", description="aws:s3, minio:s3, falaj:storage")
    aws_region: str = Field(alias="awsRegion", description="the bucket's region; MinIO may send ''")
    event_time: datetime = Field(alias="eventTime")
    event_name: str = Field(alias="eventName", description="ObjectCreated:Put, ...")
    user_identity: S3Identity | None = Field(default=None, alias="userIdentity")
    request_parameters: dict[str, Any] | None = Field(default=None, alias="requestParameters")
    response_elements: dict[str, Any] | None = Field(default=None, alias="responseElements")
    s3: S3Entity

    @model_validator(mode="before")
    @classmethod
    def _one_record(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "Records" in data:
            records = data["Records"]
            if not isinstance(records, list) or len(records) != 1:
                count = len(records) if isinstance(records, list) else type(records).__name__
                raise ValueError(
                    f"expected one record per event (a record, or a body whose Records holds "
                    f"one), got Records of {count}; send each record as its own event"
                )
            return records[0]
        return data

    @field_validator("event_name")
    @classmethod
    def _created(cls, value: str) -> str:
        if not _OBJECT_CREATED.match(value):
            raise ValueError(
                f"expected an ObjectCreated event name such as 'ObjectCreated:Put' "
                f"(MinIO: 's3:ObjectCreated:Put'), got {value!r}"
            )
        return value

    @property
    def bucket(self) -> str:
        return self.s3.bucket.name

    @property
    def key(self) -> str:
        """The object key, decoded (S3 and MinIO URL-encode it in notifications)."""
        return decode_key(self.s3.object.key)

    @property
    def object_version(self) -> str:
        """What names this content of the object: its versionId, or its eTag when unversioned."""
        if self.s3.object.version_id:
            return self.s3.object.version_id
        return "etag:" + self.s3.object.e_tag.strip('"')


class DataIngested(EventData):
    dataset: str
    location: str
    object_version: str
    rows_total: int = Field(ge=0)
    rows_ingested: int = Field(ge=0)
    rows_quarantined: int = Field(ge=0)
    offline_location: str
    quarantine_location: str | None = None
    #: The batch's data-quality report (also sent as ``data.quality``).
    quality_location: str | None = None


class ColumnQuality(EventData):
    """How one column looked in a batch. A PII column shows its null rate only."""

    #: Share of the batch's rows where the value was missing (null or blank), before checks.
    null_rate: float = Field(ge=0, le=1)
    #: Over the good rows: numbers and timestamps.
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    #: p1, p5, p50, p95, p99 of a uniform sample of the good rows' values.
    quantiles: dict[str, float] = Field(default_factory=dict)
    #: Good rows per value, for columns with allowed values.
    counts: dict[str, int] = Field(default_factory=dict)
    earliest: str | None = None
    latest: str | None = None


class DataQuality(EventData):
    """The data-quality report of one ingested batch (also stored as JSON)."""

    dataset: str
    location: str
    object_version: str
    rows_total: int = Field(ge=0)
    rows_ingested: int = Field(ge=0)
    rows_quarantined: int = Field(ge=0)
    #: Quarantined rows per column whose rule they broke (a row may count for several).
    rejected_by_column: dict[str, int]
    columns: dict[str, ColumnQuality]
    report_location: str


class DataRejected(EventData):
    dataset: str
    location: str
    reason: str
    quarantine_location: str
    #: Which version of the object was refused, as ``data.ingested`` names one it took
    #: (absent in events from before it was added).
    object_version: str | None = None


class TrainingReason(StrEnum):
    NEW_DATA = "new-data"
    DRIFT = "drift"
    SCHEDULE = "schedule"
    MANUAL = "manual"


class TrainingRequested(EventData):
    model: str
    reason: TrainingReason
    urgent: bool = False
    cause_event_id: str | None = None


class TrainingStarted(EventData):
    model: str
    job_id: str
    reason: TrainingReason


class TrainingStage(StrEnum):
    """Where a training job is, in the order it goes through them."""

    DATA = "data"
    TRAINING = "training"
    EVALUATING = "evaluating"
    EXPORTING = "exporting"
    REGISTERING = "registering"


class TrainingProgress(EventData):
    """How far a running job has come: its stage and, while it trains, the epoch."""

    model: str
    job_id: str
    stage: TrainingStage
    epoch: int = Field(default=0, ge=0, description="epochs finished so far")
    epochs: int = Field(default=0, ge=0, description="epochs the run trains in all")
    train_loss: float | None = None


class TrainingCompleted(EventData):
    model: str
    job_id: str
    version: int = Field(ge=1)
    metrics: dict[str, float]


class TrainingFailed(EventData):
    model: str
    job_id: str
    reason: str


class ModelRegistered(EventData):
    model: str
    version: int = Field(ge=1)
    digest: str
    metrics: dict[str, float]
    location: str
    training_job_id: str | None = None


#: The rollout steps, as ``falaj.rollouts.RolloutAction`` names them.
RolloutStepName = Literal["deploy", "canary", "promote", "rollback", "shadow"]


class ModelDeployed(EventData):
    model: str
    stable_version: int = Field(ge=1)
    canary_version: int | None = None
    canary_percent: int = Field(ge=0, le=100)
    shadow_version: int | None = None
    #: The step that changed the split, and why (a person's words or the evidence).
    action: RolloutStepName = "deploy"
    reason: str = ""


class RolloutRequested(EventData):
    """Someone (a person, the CLI, the loop) asks for a rollout step."""

    model: str
    action: Literal["canary", "promote", "rollback", "shadow"]
    version: int | None = Field(default=None, ge=1)
    percent: int | None = Field(default=None, ge=0, le=100)
    reason: str = ""


#: The longest inference id a caller may choose (the router refuses longer ones).
MAX_INFERENCE_ID = 200


class InferenceOutcome(EventData):
    """What really happened for one prediction (e.g. the transaction was fraud): feedback."""

    inference_id: str = Field(min_length=1, max_length=MAX_INFERENCE_ID)
    model: str
    #: The observed outcome; for a binary model 0 or 1.
    label: float
    #: Which row of the prediction's batch the outcome is for.
    row: int = Field(default=0, ge=0)


class InferenceLogged(EventData):
    inference_id: str
    model: str
    version: int = Field(ge=1)
    variant: str = Field(description="stable, canary or shadow")
    inputs: dict[str, list[float]]
    outputs: list[float]


class DriftFindingData(BaseModel):
    """One statistic of one feature past its threshold (``falaj.drift_policy.DriftFinding``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feature: str
    statistic: str
    #: None where the value is infinite: a category training never saw, a
    #: constant training column that moved (JSON has no infinity).
    value: float | None
    threshold: float
    p_value: float | None = None


class DriftDetected(EventData):
    model: str
    version: int = Field(ge=1)
    window_size: int = Field(ge=1)
    #: PSI of every scored feature (and ``prediction``): the one statistic every
    #: column has, which the training launcher reads as the drift's severity.
    scores: dict[str, float]
    drifted_features: list[str]
    #: Every statistic past its threshold, per feature; absent in events
    #: written before there was more than PSI.
    findings: list[DriftFindingData] = Field(default_factory=list)
    #: The statistic of ``scores`` and its threshold (None: PSI decides nothing).
    statistic: str = "psi"
    threshold: float | None = None


class StreamRecord(EventData):
    """One record from a queue or a topic (a RabbitMQ message, a Kafka record): a JSON object.

    Its fields are the producer's, so the catalog cannot list them; the
    function that takes records checks them against the feature schema. What
    the catalog checks is what every consumer relies on: the body is one JSON
    object with at least one field -- not an array, a scalar, or bytes that are
    not JSON (those become dead letters at the broker, with the reason).
    """

    model_config = ConfigDict(extra="allow", frozen=True, json_schema_extra={"minProperties": 1})

    @model_validator(mode="after")
    def _has_fields(self) -> StreamRecord:
        if not self.model_extra:
            raise ValueError("expected a JSON object with at least one field, got {}")
        return self


class Ping(EventData):
    """The ``data`` of Falaj's PingSources: the model a scheduled action is for.

    Knative's PingSource sends its ``spec.data`` as written; the manifests'
    PingSources write ``{"model": "<name>"}`` with contentType application/json.
    """

    model: str = Field(min_length=1, description="the registry model, e.g. fraud")


@dataclass(frozen=True)
class EventSpec:
    event_type: EventType
    source: str
    data_model: type[EventData]
    description: str


CATALOG: Mapping[EventType, EventSpec] = {
    spec.event_type: spec
    for spec in (
        EventSpec(
            EventType.OBJECT_CREATED,
            "/falaj/sources/storage",
            ObjectCreated,
            "an object was created in a bucket (an S3 event notification record)",
        ),
        EventSpec(
            EventType.DATA_INGESTED,
            "/falaj/functions/ingest",
            DataIngested,
            "a file was validated; good rows are in the feature store",
        ),
        EventSpec(
            EventType.DATA_QUALITY,
            "/falaj/functions/ingest",
            DataQuality,
            "the data-quality report of one ingested batch: counts, null rates, ranges, spread",
        ),
        EventSpec(
            EventType.DATA_REJECTED,
            "/falaj/functions/ingest",
            DataRejected,
            "a file could not be read at all and was quarantined whole",
        ),
        EventSpec(
            EventType.TRAINING_REQUESTED,
            "/falaj/functions/training-launcher",
            TrainingRequested,
            "someone or something asked for a new model version",
        ),
        EventSpec(
            EventType.TRAINING_STARTED,
            "/falaj/training",
            TrainingStarted,
            "a training job started on Ray",
        ),
        EventSpec(
            EventType.TRAINING_PROGRESS,
            "/falaj/training",
            TrainingProgress,
            "a running training job reached a stage or finished an epoch",
        ),
        EventSpec(
            EventType.TRAINING_COMPLETED,
            "/falaj/training",
            TrainingCompleted,
            "a training job finished and registered a version",
        ),
        EventSpec(
            EventType.TRAINING_FAILED, "/falaj/training", TrainingFailed, "a training job failed"
        ),
        EventSpec(
            EventType.MODEL_REGISTERED,
            "/falaj/registry",
            ModelRegistered,
            "a signed, encrypted model version entered the registry",
        ),
        EventSpec(
            EventType.MODEL_DEPLOYED,
            "/falaj/functions/rollout",
            ModelDeployed,
            "the traffic split of an InferenceService changed",
        ),
        EventSpec(
            EventType.ROLLOUT_REQUESTED,
            "/falaj/cli",
            RolloutRequested,
            "someone asked to start, resize, promote or roll back a canary, or to shadow",
        ),
        EventSpec(
            EventType.INFERENCE_OUTCOME,
            "/falaj/feedback",
            InferenceOutcome,
            "the real outcome of one earlier prediction, for per-variant accuracy",
        ),
        EventSpec(
            EventType.INFERENCE_LOGGED,
            "/falaj/inference/router",
            InferenceLogged,
            "one prediction with its inputs (payload logging)",
        ),
        EventSpec(
            EventType.DRIFT_DETECTED,
            "/falaj/functions/drift",
            DriftDetected,
            "production inputs drifted from the reference profile",
        ),
        # Knative's sources name the resource in ``source``; these are the patterns.
        EventSpec(
            EventType.RABBITMQ_MESSAGE,
            "/apis/v1/namespaces/{namespace}/rabbitmqsources/{name}#{queue}",
            StreamRecord,
            "a message from a RabbitMQ queue that was not a CloudEvent already",
        ),
        EventSpec(
            EventType.KAFKA_RECORD,
            "/apis/v1/namespaces/{namespace}/kafkasources/{name}#{topic}",
            StreamRecord,
            "a record from a Kafka topic (KafkaSource, on a cluster)",
        ),
        EventSpec(
            EventType.PING,
            "/apis/v1/namespaces/{namespace}/pingsources/{name}",
            Ping,
            "a PingSource's scheduled tick, e.g. off-peak retraining",
        ),
    )
}


def make_event(
    event_type: EventType,
    data: EventData,
    *,
    region: str,
    source: str | None = None,
    subject: str | None = None,
    traceparent: str | None = None,
) -> CloudEvent:
    """Build a CloudEvent of a catalog type, stamped with its region."""
    spec = CATALOG[event_type]
    if not isinstance(data, spec.data_model):
        raise EventError(
            f"{event_type} carries {spec.data_model.__name__}, got {type(data).__name__}"
        )
    attributes: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": str(uuid.uuid4()),
        "type": str(event_type),
        "source": source or spec.source,
        "time": datetime.now(UTC).isoformat(),
        "datacontenttype": "application/json",
        REGION_EXTENSION: region,
    }
    if subject:
        attributes["subject"] = subject
    if traceparent:
        attributes["traceparent"] = traceparent
    return CloudEvent(attributes, data.model_dump(mode="json"))


@dataclass(frozen=True)
class ParsedEvent:
    id: str
    source: str
    type: EventType
    region: str
    data: EventData
    event: CloudEvent


def parse_event(event: CloudEvent, policy: ResidencyPolicy) -> ParsedEvent:
    """Check an incoming event against the catalog and the residency policy.

    Every problem is collected into one ``EventError``; a region outside the
    policy raises ``ResidencyViolation`` (audited by the policy).
    """
    problems: list[str] = []
    raw_type = event.get("type")
    try:
        event_type = EventType(str(raw_type))
    except ValueError:
        raise EventError(
            f"unknown event type {raw_type!r}; expected one of the catalog's types "
            "(falaj events schemas lists them)",
            problems=[f"type: {raw_type!r} is not in the catalog"],
        ) from None
    region = event.get(REGION_EXTENSION)
    if not region:
        problems.append(f"{REGION_EXTENSION}: missing; every Falaj event names its data region")
    data = event.get_data()
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except ValueError:
            problems.append("data: expected a JSON object, got bytes that are not JSON")
            data = None
    model: EventData | None = None
    try:
        model = CATALOG[event_type].data_model.model_validate(data)
    except ValidationError as exc:
        problems.extend(validation_problems(exc, prefix="data."))
    if problems or model is None:
        raise EventError(f"invalid {event_type} event: " + "; ".join(problems), problems=problems)
    policy.check_region(
        str(region), resource=f"event {event['id']} ({event_type})", boundary=Boundary.EVENT_ACCEPT
    )
    return ParsedEvent(
        id=str(event["id"]),
        source=str(event["source"]),
        type=event_type,
        region=str(region),
        data=model,
        event=event,
    )


def json_schemas() -> dict[str, dict[str, Any]]:
    """The schema registry: one JSON Schema per event type, for its ``data``."""
    schemas: dict[str, dict[str, Any]] = {}
    for spec in CATALOG.values():
        schema = spec.data_model.model_json_schema()
        schema["$id"] = f"https://falaj.dev/schemas/{spec.event_type}.json"
        schema["description"] = spec.description
        schema["x-cloudevents"] = {"type": str(spec.event_type), "source": spec.source}
        schemas[str(spec.event_type)] = schema
    return schemas


def export_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for event_type, schema in json_schemas().items():
        path = directory / f"{event_type}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
