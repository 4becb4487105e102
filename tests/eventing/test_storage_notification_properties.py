"""Hostile bucket notifications and landed file names: an event, or a clear refusal.

A notification (S3's, MinIO's, or one mangled on the way) is parsed into an
``ObjectCreated`` or refused with an ``EventError``; its bucket and key then
become a location inside the bucket or are refused (``ObjectKeyError``,
``ResidencyViolation``): never another exception, and never a file outside the
bucket's folder, whatever the key says once decoded. The storage source, whose
outside input is the names of the files landed, publishes every file it can
name exactly once and refuses the others without stopping.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent, from_http
from hypothesis import example, given
from hypothesis import strategies as st

from eventing.storage_source import Ledger, StorageSource, is_in_progress
from falaj.context import Context
from falaj.errors import EventError, ObjectKeyError, ResidencyViolation
from falaj.events import EventType, ObjectCreated, parse_event
from falaj.objects import LANDING_BUCKET, Buckets, encode_key, key_problem
from falaj.publisher import EventPublisher, Receipt
from falaj.settings import Settings
from tests.support.hostile import bounded, huge_numbers, json_values, mutated, object_keys
from tests.support.notifications import AWS_PUT, MINIO_PUT, notification, record

REGION = "me-central-1"


@dataclass(frozen=True)
class Bucket:
    """A platform whose landing bucket holds a file, and links to a secret outside it."""

    ctx: Context
    buckets: Buckets
    root: Path
    secret: Path

    def __repr__(self) -> str:
        return f"Bucket(root={str(self.root)!r})"  # a failing example stays readable


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Bucket:
    home = tmp_path_factory.mktemp("notifications") / ".falaj"
    ctx = Context.create(Settings(home=home), actor="test")
    root = ctx.paths.landing
    (root / "2026").mkdir(parents=True)
    (root / "day1.csv").write_text("id\n1\n")
    (root / "2026" / "day2.csv").write_text("id\n2\n")
    outside = home.parent / "outside"
    outside.mkdir()
    secret = outside / "secret.csv"
    secret.write_text("id\n9\n")
    (root / "leak.csv").symlink_to(secret)
    (root / "leaks").symlink_to(outside, target_is_directory=True)
    return Bucket(ctx, Buckets.of(ctx), root.resolve(), secret)


def created_event(data: Any) -> CloudEvent:
    attributes = {
        "specversion": "1.0",
        "id": "n-1",
        "type": str(EventType.OBJECT_CREATED),
        "source": "minio:s3",
        "dataregion": REGION,
    }
    return CloudEvent(attributes, data)


def located_or_refused(bucket: Bucket, data: Any) -> None:
    """The notification is refused, or its object is located inside its bucket, or refused."""
    try:
        parsed = parse_event(created_event(data), bucket.ctx.policy)
    except EventError as exc:
        assert exc.problems and str(exc).startswith(f"invalid {EventType.OBJECT_CREATED} event")
        return
    created = parsed.data
    assert isinstance(created, ObjectCreated)
    assert created.object_version  # what names this content, whatever came
    try:
        location = bucket.buckets.locate(created.bucket, created.key)
    except ObjectKeyError as exc:
        assert "expected" in str(exc)
        return
    except ResidencyViolation as exc:  # a bucket of no known region
        assert created.bucket != LANDING_BUCKET and str(exc)
        return
    assert (location.bucket, location.key) == (created.bucket, created.key)
    if created.bucket == LANDING_BUCKET:
        assert location.path is not None
        assert location.path.is_relative_to(bucket.root), f"{created.key!r} left the bucket"
        assert location.path != bucket.secret.resolve()


VALID = [record(AWS_PUT, bucket=LANDING_BUCKET), notification(MINIO_PUT)]


@bounded
@given(
    data=st.one_of(
        json_values,
        huge_numbers,
        st.binary(max_size=200),  # a body that is not UTF-8, or not JSON
        st.sampled_from(VALID).flatmap(lambda valid: mutated(valid, times=4)),
        st.lists(st.sampled_from(VALID), max_size=3).map(lambda r: {"Records": r}),
    )
)
def test_any_notification_is_an_object_or_a_clear_refusal(bucket: Bucket, data: Any) -> None:
    located_or_refused(bucket, data)


#: Bucket names a sender may put in a notification: ours, another's, and not names at all.
BUCKET_NAMES = st.one_of(
    st.sampled_from(
        [
            LANDING_BUCKET,
            "bank-raw",
            "..",
            ".",
            "a/b",
            "landing\x00",
            "[",
            "x]",
            "a\u2100",
            "a\uff20b",
        ]
    ),
    st.text(min_size=1, max_size=20),
)


@bounded
@given(
    raw_key=object_keys,
    encode=st.booleans(),
    name=BUCKET_NAMES,
    source=st.sampled_from([AWS_PUT, MINIO_PUT]),
)
@example(raw_key="day1.csv", encode=True, name="[", source=AWS_PUT)  # not a URI host at all
def test_no_key_reaches_a_file_outside_its_bucket(
    bucket: Bucket, raw_key: str, encode: bool, name: str, source: str
) -> None:
    sent = record(source, bucket=name, raw_key=encode_key(raw_key) if encode else raw_key)
    located_or_refused(bucket, sent)


# -- the storage source: file names as they land ----------------------------------


class CapturingPublisher(EventPublisher):
    """Keeps what the source publishes (these properties are about what it emits)."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9/", None)
        self.published: list[CloudEvent] = []

    def publish(self, event: CloudEvent) -> Receipt:
        self.published.append(event)
        return Receipt(accepted=(str(event["id"]),))


def _one_name(raw: bytes) -> bytes:
    name = raw.replace(b"/", b"_").replace(b"\0", b"_")[:255]
    return name if name not in (b"", b".", b"..") else b"_" + name


#: File names as a file system holds them: bytes, UTF-8 or not, up to 255 of them.
FILE_NAMES = st.one_of(
    st.text(min_size=1, max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(min_size=1, max_size=30),
    st.sampled_from(
        [
            b"tx day1+2.csv",
            b"100%.csv",
            b"a%2Fb.csv",
            b"%2E%2E",
            b"..\\x.csv",
            b"\xff\xfe.csv",
            b"caf\xe9.csv",
            b"line\nbreak.csv",
            b"...",
            b"day1.csv.part",
            b".hidden.csv",
        ]
    ),
    st.integers(200, 255).map(lambda n: b"x" * (n - 4) + b".csv"),
).map(_one_name)
FOLDERS = st.sampled_from([b"", b"2026", b"d\xff", b".hidden", b"a b+c"])


def expected_key(relative: bytes) -> str | None:
    """The key a landed file is published under, or None when it is not published."""
    key = os.fsdecode(relative)
    *folders, name = key.split("/")
    if any(folder.startswith(".") for folder in folders) or is_in_progress(name):
        return None  # hidden folders are not walked; files still being written are skipped
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return None  # no key names it in a notification
    return key if key_problem(key) is None else None


@bounded
@given(files=st.lists(st.tuples(FOLDERS, FILE_NAMES), min_size=1, max_size=6))
@example(files=[(b"", b"caf\xe9.csv"), (b"", b"day1.csv")])  # Latin-1: it stopped the scan
def test_every_nameable_file_is_published_once_and_the_others_refused(
    bucket: Bucket, files: list[tuple[bytes, bytes]]
) -> None:
    with tempfile.TemporaryDirectory(dir=bucket.root.parent) as scratch:
        watch = Path(scratch) / "landing"
        landed = dict(land(os.fsencode(watch), files))
        publisher = CapturingPublisher()
        ledger = Ledger(Path(scratch) / "published.db")
        try:
            source = StorageSource(bucket.ctx, watch, publisher, ledger)
            events = source.scan()
            assert source.scan() == []  # each published once
        finally:
            ledger.close()
            publisher.close()
        expected = {k: p for k, p in landed.items() if k is not None}
        keys = [as_received(bucket, event).key for event in events]
        assert sorted(keys) == sorted(expected), "a landed file was lost or published twice"
        for key in keys:
            location = Buckets(policy=bucket.ctx.policy, local={"landing": watch}).locate(
                "landing", key
            )
            assert location.path == expected[key].resolve()


def land(watch: bytes, files: list[tuple[bytes, bytes]]) -> Iterator[tuple[str | None, Path]]:
    """Write each file (a name taken by a folder, or the other way round, is left out)."""
    os.makedirs(watch)
    for folder, name in files:
        relative = os.path.join(folder, name) if folder else name
        where = os.path.join(watch, relative)
        try:
            os.makedirs(os.path.dirname(where), exist_ok=True)
            with open(where, "xb") as handle:
                handle.write(b"id\n1\n")
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            continue
        yield expected_key(relative), Path(os.fsdecode(where))


def as_received(bucket: Bucket, event: CloudEvent) -> ObjectCreated:
    """The event as a subscriber gets it: JSON on the wire, parsed against the catalog."""
    headers, body = to_structured(event)
    parsed = parse_event(from_http(dict(headers), body), bucket.ctx.policy)
    assert isinstance(parsed.data, ObjectCreated)
    assert parsed.data.bucket == "landing"
    return parsed.data
