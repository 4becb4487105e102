"""At least once, one effect each: the broker and its dispatcher as real processes.

The subscriber (``tests.support.flaky_subscriber``) fails at random in every
way a delivery can fail (5xx, 429, no answer within the timeout, a response
lost after the effect, a handler that fails half way); its effects go through
``IdempotencyKeys.once``. Whatever happens on the way, every accepted event
must end with exactly one effect and nothing in the dead letters.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cloudevents.conversion import to_dict
from pydantic import SecretStr

from eventing.topology_io import dump_endpoints, dump_topology
from falaj.auth import Role, write_token_file
from falaj.context import Context
from falaj.publisher import BATCH_CONTENT_TYPE
from falaj.runtime.processes import ManagedProcess, ReadyCheck, free_port
from falaj.settings import PROJECT_ROOT, Settings
from falaj.topology import BackoffPolicy, BrokerSpec, DeliverySpec
from tests.eventing.conftest import broker_process, training_requested, trigger, wait_until

#: Enough retries that a run of random failures never exhausts them (0.3**16 is 4e-9),
#: waits that stay short (linear: 0, 10, 20, ... ms), and a timeout the hangs overrun.
DELIVERY = DeliverySpec(
    retry=15, backoff_policy=BackoffPolicy.LINEAR, backoff_delay_s=0.01, timeout_s=0.3
)


@dataclass
class Platform:
    settings: Settings
    port: int
    token: str
    subscriber: str
    effects_db: Path
    processes: list[ManagedProcess] = field(default_factory=list)

    @property
    def ingress(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(self.subscriber + "stats", timeout=10).json()
        return stats

    def effects(self) -> list[tuple[str, str]]:
        with sqlite3.connect(f"file:{self.effects_db}?mode=ro", uri=True) as db:
            return db.execute("SELECT source, id FROM effects").fetchall()

    def queue(self, sql: str) -> list[tuple[Any, ...]]:
        path = self.settings.resolved_home / "broker" / "queue.db"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return db.execute(sql).fetchall()


@pytest.fixture
def platform(settings: Settings, ctx: Context, tmp_path: Path) -> Iterator[Platform]:
    """A flaky subscriber on a free port and the files a broker process reads."""
    broker_token = ctx.tokens.issue("broker", Role.SERVICE)
    token_file = tmp_path / "broker.token"
    write_token_file(token_file, broker_token)
    port, subscriber_port = free_port(), free_port()
    dump_topology(
        [BrokerSpec(name="default", delivery=DELIVERY)],
        [trigger("effects", "flaky")],
        tmp_path / "topology.json",
    )
    subscriber = ManagedProcess(
        name="flaky",
        argv=[
            sys.executable,
            "-m",
            "tests.support.flaky_subscriber",
            f"--port={subscriber_port}",
            f"--db={tmp_path / 'effects.db'}",
            f"--token-file={token_file}",
        ],
        env=dict(os.environ),
        log_path=tmp_path / "flaky.log",
        cwd=PROJECT_ROOT,
    ).start()
    url = f"http://127.0.0.1:{subscriber_port}/"
    dump_endpoints({"flaky": url}, tmp_path / "endpoints.json")
    running = Platform(
        settings=settings.model_copy(
            update={"broker_port": port, "token": SecretStr(broker_token)}
        ),
        port=port,
        token=ctx.tokens.issue("producer", Role.SERVICE),
        subscriber=url,
        effects_db=tmp_path / "effects.db",
        processes=[subscriber],
    )
    try:
        subscriber.wait_ready(ReadyCheck("127.0.0.1", subscriber_port, "/stats"))
        yield running
    finally:
        for process in reversed(running.processes):
            process.stop()


def _batches(count: int, size: int) -> list[tuple[list[str], bytes]]:
    events = [to_dict(training_requested(f"m{i}")) for i in range(count)]
    return [
        ([str(e["id"]) for e in events[i : i + size]], orjson.dumps(events[i : i + size]))
        for i in range(0, count, size)
    ]


def _assert_one_effect_each(platform: Platform, ids: set[str]) -> None:
    effects = platform.effects()
    assert len(effects) == len(ids), f"{len(effects) - len(ids)} effects more than events"
    assert {event_id for _, event_id in effects} == ids
    assert platform.queue("SELECT count(*) FROM dead_letters") == [(0,)]


def test_10000_events_through_a_subscriber_failing_at_random_have_one_effect_each(
    platform: Platform, tmp_path: Path
) -> None:
    broker = broker_process(platform.settings, tmp_path, "broker")
    platform.processes.append(broker.start())
    broker.wait_ready(ReadyCheck("127.0.0.1", platform.port, "/readyz"), timeout_s=60)

    batches = _batches(10_000, 100)
    with httpx.Client(headers={"Authorization": f"Bearer {platform.token}"}) as client:
        for _, body in batches:
            response = client.post(
                platform.ingress, content=body, headers={"content-type": BATCH_CONTENT_TYPE}
            )
            assert response.status_code == 202, response.text
    ids = {event_id for batch_ids, _ in batches for event_id in batch_ids}

    wait_until(lambda: platform.stats()["effects"] >= 10_000, timeout_s=240, what="10,000 effects")
    # Every delivery ends done: the acks are written after the effects, so wait for them too.
    wait_until(
        lambda: platform.queue("SELECT count(*) FROM deliveries WHERE status != 'done'") == [(0,)],
        timeout_s=60,
        what="every delivery recorded as done",
    )
    _assert_one_effect_each(platform, ids)
    fates = platform.stats()["fates"]
    # Each way of failing happened, and duplicates came and had no effect.
    for fate in ("503", "429", "hang", "lost", "rollback", "duplicate"):
        assert fates.get(fate, 0) > 0, f"no {fate!r} in {fates}"
    attempts = platform.queue("SELECT sum(attempts) FROM deliveries")[0][0]
    assert attempts > 10_000


RETRY_BACKOFF_S = 0.05


@dataclass
class Producer:
    """Publishes batches until each got a 202, retrying through a broker restart."""

    platform: Platform
    batches: list[tuple[list[str], bytes]]
    accepted: set[str] = field(default_factory=set)
    refused: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    failure: BaseException | None = None

    def run(self) -> None:
        try:
            headers = {"Authorization": f"Bearer {self.platform.token}"}
            with httpx.Client(headers=headers, timeout=10) as client:
                for batch_ids, body in self.batches:
                    while not self._publish(client, body):
                        self.refused += 1
                        # The producer's own retry backoff while the broker is down (what
                        # any at-least-once producer does), not the test waiting on it.
                        time.sleep(RETRY_BACKOFF_S)
                    self.accepted.update(batch_ids)
        except BaseException as exc:  # handed to the test thread, which re-raises it
            self.failure = exc
        finally:
            self.done.set()

    def _publish(self, client: httpx.Client, body: bytes) -> bool:
        try:
            response = client.post(
                self.platform.ingress, content=body, headers={"content-type": BATCH_CONTENT_TYPE}
            )
        except httpx.TransportError:
            return False
        return response.status_code == 202


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(line) for line in found.stdout.split()]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_kill_9_mid_stream_and_a_restart_lose_no_accepted_event(
    platform: Platform, tmp_path: Path
) -> None:
    first = broker_process(platform.settings, tmp_path, "broker-1")
    platform.processes.append(first.start())
    ready = ReadyCheck("127.0.0.1", platform.port, "/readyz")
    first.wait_ready(ready, timeout_s=60)
    [dispatcher] = _children(first.pid or 0)

    producer = Producer(platform, _batches(6_000, 20))
    thread = threading.Thread(target=producer.run, name="producer", daemon=True)
    thread.start()
    # Mid-stream: the producer is publishing and the dispatcher delivering. On a
    # busy machine the dispatcher lags the ingress, so half the stream accepted
    # also counts as mid-stream (else every event could be in before the kill).
    wait_until(
        lambda: platform.stats()["effects"] >= 1_000 or len(producer.accepted) >= 3_000,
        timeout_s=120,
        what="1,000 effects or 3,000 events accepted",
    )
    assert first.pid is not None
    os.kill(first.pid, signal.SIGKILL)
    assert first.popen is not None and first.popen.wait(timeout=10) == -signal.SIGKILL
    accepted_at_kill = len(producer.accepted)
    assert 1_000 <= accepted_at_kill < 6_000, "the kill must land while events still come in"
    # Its dispatcher sees the broker gone (end of its pipe) and stops; none keeps delivering.
    wait_until(lambda: _gone(dispatcher), timeout_s=15, what="the orphaned dispatcher to stop")

    second = broker_process(platform.settings, tmp_path, "broker-2")
    platform.processes.append(second.start())
    second.wait_ready(ready, timeout_s=60)
    assert producer.done.wait(timeout=240), "the producer did not finish"
    thread.join(timeout=10)
    assert producer.failure is None, producer.failure
    assert producer.refused > 0, "the producer never saw the broker down"

    ids = {event_id for batch_ids, _ in producer.batches for event_id in batch_ids}
    assert producer.accepted == ids
    wait_until(lambda: platform.stats()["effects"] >= len(ids), timeout_s=240, what="every effect")
    wait_until(
        lambda: platform.queue("SELECT count(*) FROM deliveries WHERE status != 'done'") == [(0,)],
        timeout_s=60,
        what="every delivery recorded as done",
    )
    _assert_one_effect_each(platform, ids)
    assert platform.queue("SELECT count(*) FROM events") == [(len(ids),)]
