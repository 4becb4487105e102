"""The event catalog: every CloudEvent type Falaj emits, with its ``data`` model.

One place lists each ``type``, the ``source`` that emits it and a pydantic model
for its ``data``; the JSON Schemas (the schema registry) are exported from it.
Every event carries the ``dataregion`` extension; ``parse_event`` refuses one
whose region the residency policy does not allow.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from cloudevents.http import CloudEvent
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from falaj.errors import EventError
from falaj.residency import Boundary, ResidencyPolicy

SPECVERSION = "1.0"
REGION_EXTENSION = "dataregion"


class EventType(StrEnum):
    OBJECT_FINALIZED = "dev.falaj.storage.object.finalized"
    DATA_INGESTED = "dev.falaj.data.ingested"
    DATA_REJECTED = "dev.falaj.data.rejected"
    TRAINING_REQUESTED = "dev.falaj.training.requested"
    TRAINING_STARTED = "dev.falaj.training.started"
    TRAINING_COMPLETED = "dev.falaj.training.completed"
    TRAINING_FAILED = "dev.falaj.training.failed"
    MODEL_REGISTERED = "dev.falaj.model.registered"
    MODEL_DEPLOYED = "dev.falaj.model.deployed"
    INFERENCE_LOGGED = "dev.falaj.inference.logged"
    DRIFT_DETECTED = "dev.falaj.drift.detected"


class EventData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ObjectFinalized(EventData):
    """A file was written to a watched storage location (like a GCS/S3 object event)."""

    location: str = Field(description="URI of the object, e.g. file:///srv/landing/tx.csv")
    name: str
    size: int = Field(ge=0)
    generation: str = Field(description="version of the object; re-delivery of it is a no-op")
    content_type: str = "text/csv"


class DataIngested(EventData):
    dataset: str
    location: str
    generation: str
    rows_total: int = Field(ge=0)
    rows_ingested: int = Field(ge=0)
    rows_quarantined: int = Field(ge=0)
    offline_location: str
    quarantine_location: str | None = None


class DataRejected(EventData):
    dataset: str
    location: str
    reason: str
    quarantine_location: str


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


class ModelDeployed(EventData):
    model: str
    stable_version: int = Field(ge=1)
    canary_version: int | None = None
    canary_percent: int = Field(ge=0, le=100)


class InferenceLogged(EventData):
    inference_id: str
    model: str
    version: int = Field(ge=1)
    variant: str = Field(description="stable or canary")
    inputs: dict[str, list[float]]
    outputs: list[float]


class DriftDetected(EventData):
    model: str
    version: int = Field(ge=1)
    window_size: int = Field(ge=1)
    statistic: str
    threshold: float
    scores: dict[str, float]
    drifted_features: list[str]


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
            EventType.OBJECT_FINALIZED,
            "/falaj/sources/storage",
            ObjectFinalized,
            "a file landed in a watched storage location",
        ),
        EventSpec(
            EventType.DATA_INGESTED,
            "/falaj/functions/ingest",
            DataIngested,
            "a file was validated; good rows are in the feature store",
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
        problems.extend(
            f"data.{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
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
