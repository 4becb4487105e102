from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from eventing.storage_source import (
    Ledger,
    StorageSource,
    content_type_of,
    event_id_of,
    generation_of,
    is_in_progress,
)
from falaj.context import Context
from falaj.errors import ResidencyViolation
from falaj.publisher import EventPublisher
from falaj.runtime.processes import ManagedProcess
from falaj.settings import PROJECT_ROOT, Settings
from tests.eventing.conftest import BrokerFactory, RunningBroker, wait_until

FINALIZED = "dev.falaj.storage.object.finalized"


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


def test_content_type_and_generation(tmp_path: Path) -> None:
    a = land(tmp_path, "a.csv", "id,amount\n1,2\n")
    b = land(tmp_path, "b.parquet", "id,amount\n1,2\n")
    assert content_type_of(a) == "text/csv"
    assert content_type_of(b) == "application/vnd.apache.parquet"
    assert content_type_of(tmp_path / "x.unknownext") == "application/octet-stream"
    assert generation_of(a) == generation_of(b)  # same bytes, same generation
    assert event_id_of(a.as_uri(), "g1") == event_id_of(a.as_uri(), "g1")
    assert event_id_of(a.as_uri(), "g1") != event_id_of(a.as_uri(), "g2")


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
    first = {e.data["name"]: e.data for e in source.scan()}
    assert sorted(first) == ["2026/day2.csv", "day1.csv"]
    assert source.scan() == []  # nothing new

    (watch / "day1.csv").write_text("id\n1\n")  # rewritten with the same bytes
    (watch / "2026" / "day2.csv").write_text("id\n2\n22\n")  # changed
    [changed] = source.scan()
    assert changed.data["name"] == "2026/day2.csv"
    assert changed.data["generation"] != first["2026/day2.csv"]["generation"]

    published = running.events(FINALIZED)
    assert len(published) == 3
    assert published[0]["data"]["location"].startswith("file://")
    assert published[0]["data"]["size"] > 0


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
        wait_until(lambda: len(running.events(FINALIZED)) == 2, 30, "the two files to publish")
        first.stop()

        second.start()
        # Sorted last, so once it is published the restarted source has looked at a and b.
        land(watch, "z.csv", "id\n3\n")
        wait_until(lambda: len(running.events(FINALIZED)) >= 3, 30, "the new file to publish")
        names = [e["data"]["name"] for e in running.events(FINALIZED)]
        assert names == ["a.csv", "b.csv", "z.csv"]
    finally:
        first.stop()
        second.stop()
