"""Ingest's quarantine is a storage location like the others: out of region, it gets no byte.

A local platform's quarantine is a folder of its home, always in the local
region, so the policy here is the platform's own with only that folder placed
abroad: the one way to see that ingest asks before it writes there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from falaj.context import Context
from falaj.demo.data import generate_transactions
from falaj.errors import ResidencyViolation
from falaj.events import EventData, EventType, ObjectCreated, make_event, parse_event
from falaj.objects import LANDING_BUCKET, encode_key
from falaj.residency import ResidencyPolicy
from functions.ingest.function import IngestFunction
from tests.support.notifications import AWS_PUT, record


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuarantineAbroad(ResidencyPolicy):
    """The platform's policy, with the quarantine folder in eu-west-1."""

    quarantine: Path

    def region_of(self, location: str) -> str | None:
        if Path(location).is_relative_to(self.quarantine):
            return "eu-west-1"
        return super().region_of(location)


class CapturingIngest(IngestFunction):
    """The real function, with its emits kept instead of sent to a broker."""

    def __init__(self) -> None:
        super().__init__()
        self.emitted: list[tuple[EventType, EventData]] = []

    def emit(self, event_type: EventType, data: EventData, *, subject: str | None = None) -> None:
        self.emitted.append((event_type, data))


@pytest.fixture
def abroad(ctx: Context) -> Context:
    policy = QuarantineAbroad(
        allowed_regions=ctx.policy.allowed_regions,
        local_region=ctx.policy.local_region,
        storage_regions=ctx.policy.storage_regions,
        audit=ctx.audit,
        actor="ingest",
        quarantine=ctx.paths.quarantine,
    )
    return dataclasses.replace(ctx, policy=policy)


@pytest.fixture
def function(abroad: Context) -> Iterator[CapturingIngest]:
    started = CapturingIngest()
    started.start(abroad)
    try:
        yield started
    finally:
        started.stop()


def land_and_ingest(ctx: Context, function: IngestFunction, key: str, content: bytes) -> None:
    path = ctx.paths.landing / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    data = ObjectCreated.model_validate(
        record(AWS_PUT, bucket=LANDING_BUCKET, raw_key=encode_key(key), version_id="v1")
    )
    function.handle(
        parse_event(
            make_event(EventType.OBJECT_CREATED, data, region=ctx.settings.region), ctx.policy
        )
    )


@pytest.mark.parametrize(
    ("key", "content"),
    [
        # Bad rows among good ones: their .jsonl would be opened in the quarantine.
        (
            "some-bad-rows.csv",
            generate_transactions(40, seed=3, cards=5, bad_rows=4).to_csv(index=False).encode(),
        ),
        # A file that cannot be read at all: it would be copied there whole.
        ("unreadable.csv", b"\xff\xfe\x00\x01binary\x00"),
    ],
)
def test_a_quarantine_out_of_region_gets_no_byte(
    abroad: Context, function: CapturingIngest, key: str, content: bytes
) -> None:
    with pytest.raises(ResidencyViolation, match="eu-west-1") as refused:
        land_and_ingest(abroad, function, key, content)
    assert Path(refused.value.resource).is_relative_to(abroad.paths.quarantine)
    quarantined = list(abroad.paths.quarantine.rglob("*"))
    assert quarantined == []
    assert function.emitted == []
    [entry] = [e for e in abroad.audit.entries() if e["action"] == "policy.refused"]
    assert (entry["resource"], entry["region"]) == (refused.value.resource, "eu-west-1")
