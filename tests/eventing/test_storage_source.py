from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cloudevents.http import CloudEvent
from pydantic import SecretStr

from eventing.storage_source import (
    Ledger,
    StorageSource,
    content_type_of,
    digest_of,
    event_id_of,
    is_in_progress,
)
from falaj.context import Context
from falaj.errors import ConfigError, ResidencyViolation
from falaj.events import EventType, ObjectCreated
from falaj.publisher import EventPublisher
from falaj.runtime.processes import ManagedProcess
from falaj.settings import PROJECT_ROOT, Settings
from tests.eventing.conftest import BrokerFactory, RunningBroker, wait_until

CREATED = str(EventType.OBJECT_CREATED)


def land(folder: Path, name: str, content: str) -> Path:
    """Write as a well-behaved writer does: a temporary name, then a rename."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{name}.part"
    partial.write_text(content)
    return partial.rename(folder / name)


@pytest.mark.parametrize(
    ("name", "skipped"),
    [("tx.csv", False), (".tx.csv", True), ("tx.csv.tmp", True), ("tx.csv.part", True)],
)
def test_files_still_being_written_are_skipped(name: str, skipped: bool) -> None:
    assert is_in_progress(name) is skipped


def test_content_type_and_digests(tmp_path: Path) -> None:
    content = "id,amount\n1,2\n"
    a = land(tmp_path, "a.csv", content)
    b = land(tmp_path, "b.parquet", content)
    assert content_type_of(a) == "text/csv"
    assert content_type_of(b) == "application/vnd.apache.parquet"
    assert content_type_of(tmp_path / "x.unknownext") == "application/octet-stream"
    digest = digest_of(a)
    assert digest.size == len(content.encode())
    assert digest.etag == hashlib.md5(content.encode()).hexdigest()  # S3's single-part ETag
    assert digest.version_id == "sha256:" + hashlib.sha256(content.encode()).hexdigest()
    assert digest_of(b) == digest  # same bytes, same version
    one = event_id_of("landing", "a.csv", "v1")
    assert one == event_id_of("landing", "a.csv", "v1")
    others = {
        event_id_of("landing", "a.csv", "v2"),
        event_id_of("landing", "b.csv", "v1"),
        event_id_of("raw", "a.csv", "v1"),
    }
    assert one not in others and len(others) == 3


def test_sequencers_grow_across_restarts_and_clock_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "published.db"
    ledger = Ledger(path)
    first, second = ledger.next_sequencer(), ledger.next_sequencer()
    ledger.close()
    # The clock stepped back to the epoch: the sequencer still grows.
    monkeypatch.setattr(time, "time_ns", lambda: 0)
    reopened = Ledger(path)
    third = reopened.next_sequencer()
    reopened.close()
    assert len({len(first), len(second), len(third)}) == 1  # fixed width: compare as strings
    assert first < second < third
    assert int(third, 16) == int(second, 16) + 1


def source_for(ctx: Context, running: RunningBroker, token: str, watch: Path) -> StorageSource:
    ledger = Ledger(ctx.paths.state / "storage-source" / "published.db")
    return StorageSource(ctx, watch, EventPublisher(running.url, token), ledger)


def test_each_new_or_changed_file_is_published_once(
    start_broker: BrokerFactory, ctx: Context, service_token: str, tmp_path: Path
) -> None:
    running = start_broker()
    watch = tmp_path / "landing"
    land(watch, "day1.csv", "id\n1\n")
    land(watch / "2026", "day2.csv", "id\n2\n")
    (watch / "day3.csv.part").write_text("id\n3")  # still being written

    source = source_for(ctx, running, service_token, watch)
    first = {e.data["s3"]["object"]["key"]: e.data for e in source.scan()}
    assert sorted(first) == ["2026/day2.csv", "day1.csv"]
    assert source.scan() == []  # nothing new

    (watch / "day1.csv").write_text("id\n1\n")  # rewritten with the same bytes
    (watch / "2026" / "day2.csv").write_text("id\n2\n22\n")  # changed
    [changed] = source.scan()
    assert changed.data["s3"]["object"]["key"] == "2026/day2.csv"
    before = first["2026/day2.csv"]["s3"]["object"]
    after = changed.data["s3"]["object"]
    assert after["versionId"] != before["versionId"] and after["eTag"] != before["eTag"]
    assert after["sequencer"] > before["sequencer"]

    originals = {"day1.csv": b"id\n1\n", "2026/day2.csv": b"id\n2\n"}
    published = running.events(CREATED)
    assert len(published) == 3
    for sent in published:
        record = ObjectCreated.model_validate(sent["data"])
        content = b"id\n2\n22\n" if sent["id"] == changed["id"] else originals[record.key]
        assert record.event_name == "ObjectCreated:Put" and record.bucket == "landing"
        assert record.aws_region == ctx.settings.region
        assert record.s3.object.size == len(content)
        assert record.s3.object.e_tag == hashlib.md5(content).hexdigest()
        assert record.object_version == "sha256:" + hashlib.sha256(content).hexdigest()
        assert sent["id"] == event_id_of("landing", record.key, record.object_version)


def test_an_unreachable_broker_means_a_retry_on_the_next_scan(
    start_broker: BrokerFactory, ctx: Context, service_token: str, tmp_path: Path
) -> None:
    running = start_broker()
    watch = tmp_path / "landing"
    land(watch, "a.csv", "id\n1\n")
    source = source_for(ctx, running, "not-a-token", watch)
    assert source.scan() == []  # refused with 401: not recorded as published
    source.publisher = EventPublisher(running.url, service_token)
    assert len(source.scan()) == 1


class CapturingPublisher(EventPublisher):
    """Keeps what the source publishes: these tests are about what it emits, not delivery."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9/", None)
        self.published: list[CloudEvent] = []

    def publish(self, event: CloudEvent) -> None:
        self.published.append(event)


@pytest.fixture
def capture() -> Iterator[CapturingPublisher]:
    publisher = CapturingPublisher()
    try:
        yield publisher
    finally:
        publisher.close()


def keys_of(events: list[CloudEvent]) -> list[str]:
    return [ObjectCreated.model_validate(e.data).key for e in events]


def test_files_linked_from_outside_the_bucket_are_never_published(
    ctx: Context, capture: CapturingPublisher, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    land(outside, "secret.csv", "id\n9\n")
    watch = tmp_path / "landing"
    land(watch, "day1.csv", "id\n1\n")
    (watch / "leak.csv").symlink_to(outside / "secret.csv")
    (watch / "leaks").symlink_to(outside, target_is_directory=True)
    (watch / "latest.csv").symlink_to(watch / "day1.csv")  # inside the bucket: fine
    source = StorageSource(ctx, watch, capture, Ledger(tmp_path / "l.db"))

    assert sorted(keys_of(source.scan())) == ["day1.csv", "latest.csv"]
    assert source.scan() == []
    assert keys_of(capture.published) == ["day1.csv", "latest.csv"]
    refused = [e for e in ctx.audit.entries() if e["action"] == "storage.refused"]
    # Refused once, not at every scan; the symlinked folder is never walked into.
    assert len(refused) == 1
    assert "'leak.csv'" in refused[0]["resource"]
    assert "outside the bucket's folder" in refused[0]["details"]["reason"]


def test_keys_are_url_encoded_and_the_bucket_can_be_named(
    ctx: Context, capture: CapturingPublisher, tmp_path: Path
) -> None:
    watch = tmp_path / "landing"
    land(watch / "2026", "tx day1+2.csv", "id\n1\n")
    source = StorageSource(ctx, watch, capture, Ledger(tmp_path / "l.db"), bucket="bank-raw")
    [event] = source.scan()
    assert event.data["s3"]["object"]["key"] == "2026/tx+day1%2B2.csv"  # as S3 sends it
    assert event.data["s3"]["bucket"] == {"name": "bank-raw"}
    assert event.data["s3"]["object"]["contentType"] == "text/csv"
    record = ObjectCreated.model_validate(event.data)
    assert (record.bucket, record.key) == ("bank-raw", "2026/tx day1+2.csv")
    assert event["subject"] == record.key
    with pytest.raises(ConfigError, match="--bucket 'a/b'"):
        StorageSource(ctx, watch, capture, Ledger(tmp_path / "l.db"), bucket="a/b")


def test_a_watched_folder_outside_the_allowed_regions_is_refused(tmp_path: Path) -> None:
    ctx = Context.create(
        Settings(home=tmp_path / ".falaj", region="eu-west-1"), actor="storage-source"
    )
    source = StorageSource(
        ctx, tmp_path, EventPublisher("http://127.0.0.1:9/", None), Ledger(tmp_path / "l.db")
    )
    with pytest.raises(ResidencyViolation, match="eu-west-1"):
        source.check_residency()
    assert [e["action"] for e in ctx.audit.entries()] == ["policy.refused"]


def test_the_process_publishes_nothing_again_after_a_restart(
    start_broker: BrokerFactory, settings: Settings, service_token: str, tmp_path: Path
) -> None:
    running = start_broker()
    watch = tmp_path / "landing"
    land(watch, "a.csv", "id\n1\n")
    land(watch, "b.csv", "id\n2\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FALAJ_")}
    env.update(
        settings.model_copy(
            update={"broker_url": running.url, "token": SecretStr(service_token)}
        ).to_env()
    )

    def source(name: str) -> ManagedProcess:
        argv = [sys.executable, "-m", "eventing.storage_source", "--watch", str(watch)]
        return ManagedProcess(
            name=name,
            argv=[*argv, "--interval", "0.1"],
            env=env,
            log_path=tmp_path / f"{name}.log",
            cwd=PROJECT_ROOT,
        )

    first, second = source("source-1"), source("source-2")
    try:
        first.start()
        wait_until(lambda: len(running.events(CREATED)) == 2, 30, "the two files to publish")
        first.stop()

        second.start()
        # Sorted last, so once it is published the restarted source has looked at a and b.
        land(watch, "z.csv", "id\n3\n")
        wait_until(lambda: len(running.events(CREATED)) >= 3, 30, "the new file to publish")
        names = [e["data"]["s3"]["object"]["key"] for e in running.events(CREATED)]
        assert names == ["a.csv", "b.csv", "z.csv"]
    finally:
        first.stop()
        second.stop()
