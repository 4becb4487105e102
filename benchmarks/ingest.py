"""Ingest: landed files into Feast, against Feast's own ``materialize`` of the same rows.

Each part runs as it runs on the platform, as real processes:

- ``rows_per_s_1m``: a 1,000,000-row CSV (card transactions, a few broken)
  ingested by the ``ingest`` function under functions-framework: validated,
  quarantined or stored offline (Parquet, by date) and online (each card's
  newest row); timed from the storage event's POST to the function's answer,
  which comes once both stores hold the rows. The peer, ``feast_materialize``:
  Feast's ``materialize`` of the same rows from the same offline files into a
  fresh online store (what a Feast user runs after writing offline).
- ``peak_rss_mb_1m`` / ``peak_rss_mb_5m``: the function's peak resident memory
  (VmHWM) for a 1M- and a 5M-row file, each in a fresh process: it must not
  grow with the file.
- ``freshness_ms_1k``: a 1,000-row file renamed into the landing folder until
  its last card's features are readable online, through the storage source,
  the broker and the function (median of a few files).
- ``online_p99_ms_sqlite_1`` (and Redis, 1 and 100 entities, when
  FALAJ_ONLINE_STORE points at one): ``FeatureStoreClient.online_features``.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pandas as pd
from cloudevents.conversion import to_binary
from pydantic import SecretStr

from benchmarks.common import Row, median, percentile
from falaj.auth import Role, write_token_file
from falaj.context import Context
from falaj.demo.data import DEFAULT_START, generate_transactions
from falaj.events import EventType, ObjectCreated, StreamRecord, make_event
from falaj.features import FeatureStoreClient
from falaj.objects import LANDING_BUCKET, encode_key
from falaj.publisher import EventPublisher
from falaj.runtime.processes import ManagedProcess, ReadyCheck, broker_argv, free_port, port_open
from falaj.schema import load_schema
from falaj.settings import PROJECT_ROOT, Settings
from falaj.topology import BrokerSpec, TriggerSpec
from falaj.topology_files import dump_endpoints, dump_topology

HOST = "127.0.0.1"
#: Distinct cards in the files: each file pushes each card's newest row online,
#: and Feast writes ~5,500 entities/s to its SQLite store, so rows/s falls as
#: cards rise; the full run measures 50,000 cards too.
CARDS = 10_000
MANY_CARDS = 50_000
PIECE_ROWS = 1_000_000
FRESHNESS_FILES = 5
RECORDS_SOURCE = "/apis/v1/namespaces/falaj/rabbitmqsources/records#falaj-records"
ONLINE_READS = 500
REDIS_PORT = 6379
#: The warm-up file's rows are long before the measured ones, so they never collide.
WARM_UP_START = DEFAULT_START - timedelta(days=365)


@dataclass(frozen=True)
class Sizes:
    rows: int
    #: A second, larger file for peak memory; None skips it (the quick run).
    large_rows: int | None
    #: Also ingest ``rows`` over MANY_CARDS cards.
    many_cards: bool
    #: Records published one at a time for the streaming freshness.
    records: int


QUICK = Sizes(rows=150_000, large_rows=None, many_cards=False, records=20)
FULL = Sizes(rows=1_000_000, large_rows=5_000_000, many_cards=True, records=300)


def _write_transactions(path: Path, rows: int, *, seed: int, cards: int = CARDS) -> None:
    """A CSV of ``rows`` transactions, 10 of every million broken, written a piece at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for index, start in enumerate(range(0, rows, PIECE_ROWS)):
            count = min(PIECE_ROWS, rows - start)
            piece = generate_transactions(
                count,
                seed=seed + index,
                cards=cards,
                bad_rows=max(1, count // 100_000),
                # Each piece its own 30 days: (card, time) stays unique across pieces.
                start=DEFAULT_START + timedelta(days=30 * index),
            )
            piece.to_csv(out, index=False, header=index == 0)
            del piece
            gc.collect()


@dataclass
class Home:
    settings: Settings
    ctx: Context
    token: str
    work: Path

    @classmethod
    def make(cls, work: Path) -> Home:
        settings = Settings(home=work / ".falaj", broker_port=free_port())
        ctx = Context.create(settings, actor="benchmark")
        token = ctx.tokens.issue("benchmark", Role.SERVICE)
        token_file = ctx.paths.keys / "service.token"
        write_token_file(token_file, token)
        return cls(settings.model_copy(update={"token_file": token_file}), ctx, token, work)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FALAJ_")}
        env.update(self.settings.to_env())
        return env


@contextmanager
def _broker(home: Home, triggers: list[TriggerSpec]) -> Iterator[None]:
    """The broker the function sends its events to (and, with Triggers, delivers from)."""
    work = home.work
    dump_topology([BrokerSpec(name="default")], triggers, work / "topology.json")
    if not (work / "endpoints.json").exists():
        dump_endpoints({}, work / "endpoints.json")
    broker = ManagedProcess(
        name="broker",
        argv=broker_argv(work / "topology.json", work / "endpoints.json"),
        env=home.env(),
        log_path=work / "broker.log",
        cwd=PROJECT_ROOT,
    ).start()
    try:
        broker.wait_ready(ReadyCheck(HOST, home.settings.broker_port, "/readyz"), timeout_s=60)
        yield
    finally:
        broker.stop()


@contextmanager
def _function(home: Home, name: str) -> Iterator[tuple[ManagedProcess, str]]:
    """The ingest function under functions-framework, as its Knative Service runs it."""
    port = free_port()
    process = ManagedProcess(
        name=name,
        argv=[
            sys.executable,
            "-m",
            "functions_framework",
            "--source",
            str(PROJECT_ROOT / "functions" / "ingest" / "main.py"),
            "--target",
            "handle",
            "--signature-type",
            "cloudevent",
            "--host",
            HOST,
            "--port",
            str(port),
        ],
        env=home.env(),
        log_path=home.work / f"{name}.log",
        cwd=PROJECT_ROOT,
    ).start()
    try:
        process.wait_ready(ReadyCheck(HOST, port), timeout_s=120)
        yield process, f"http://{HOST}:{port}/"
    finally:
        process.stop()


def _notification(key: str, path: Path) -> ObjectCreated:
    """The S3 notification record of a landed file, as S3 or the storage source sends it."""
    return ObjectCreated.model_validate(
        {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "me-central-1",
            "eventTime": "2026-11-23T12:00:00Z",
            "eventName": "ObjectCreated:Put",
            "s3": {
                "s3SchemaVersion": "1.0",
                "bucket": {"name": LANDING_BUCKET},
                "object": {
                    "key": encode_key(key),
                    "size": path.stat().st_size,
                    "eTag": "0" * 32,
                    "versionId": "v1",
                },
            },
        }
    )


def _ingest_file(home: Home, url: str, key: str) -> float:
    """POST the storage event for ``key``; seconds until the function answers 2xx."""
    data = _notification(key, home.ctx.paths.landing / key)
    headers, body = to_binary(make_event(EventType.OBJECT_CREATED, data, region="me-central-1"))
    started = time.perf_counter()
    response = httpx.post(
        url,
        headers={**headers, "Authorization": f"Bearer {home.token}"},
        content=body,
        timeout=600,
    )
    elapsed = time.perf_counter() - started
    if response.status_code >= 300:
        raise RuntimeError(
            f"ingest answered {response.status_code}: {response.text[:300]}; "
            f"the function's log is in {home.work}"
        )
    return elapsed


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def ingest_run(
    work: Path, rows: int, *, seed: int, cards: int = CARDS
) -> tuple[float, float, Home]:
    """Ingest one file of ``rows`` in a fresh function process: (seconds, peak MB, home)."""
    home = Home.make(work)
    _write_transactions(home.ctx.paths.landing / "transactions.csv", rows, seed=seed, cards=cards)
    warm_up = generate_transactions(1_000, seed=seed + 1_000, cards=100, start=WARM_UP_START)
    warm_up.to_csv(home.ctx.paths.landing / "warm-up.csv", index=False)
    with _broker(home, []), _function(home, f"ingest-{rows}") as (process, url):
        assert process.pid is not None
        # A function that has handled an event before, as a running one has: Feast
        # instruments its functions (typeguard) on their first call, ~1.5 s once.
        _ingest_file(home, url, "warm-up.csv")
        baseline = _peak_rss_mb(process.pid)
        seconds = _ingest_file(home, url, "transactions.csv")
        peak = _peak_rss_mb(process.pid)
    print(
        f"ingest {rows:,} rows over {cards:,} cards: {seconds:.2f} s = {rows / seconds:,.0f} "
        f"rows/s; peak {peak:.0f} MB (before it {baseline:.0f})"
    )
    return seconds, peak, home


def materialize_run(ingested: Home, work: Path) -> float:
    """Feast's ``materialize`` of the ingested offline rows into a fresh online store."""
    home = Home.make(work)
    source = ingested.ctx.paths.offline
    shutil.copytree(source, home.ctx.paths.offline, copy_function=os.link)
    client = FeatureStoreClient(home.ctx, load_schema(home.settings))
    client.apply()
    store = client.store
    started = time.perf_counter()
    with warnings.catch_warnings():
        # Feast's dask offline reader warns once per partition (pandas downcasting).
        warnings.simplefilter("ignore", FutureWarning)
        store.materialize(
            start_date=DEFAULT_START - timedelta(days=1),
            end_date=DEFAULT_START + timedelta(days=400),
        )
    return time.perf_counter() - started


def online_reads(client: FeatureStoreClient, entities: int) -> list[float]:
    cards = [f"card-{i:05d}" for i in range(entities)]
    client.online_features(cards)  # warm: registry and connection
    timings = []
    for _ in range(ONLINE_READS):
        started = time.perf_counter()
        client.online_features(cards)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def redis_reads(ingested: Home, work: Path) -> tuple[list[float], list[float]] | None:
    """The same online reads with Feast's Redis online store, holding the same rows."""
    if not port_open(HOST, REDIS_PORT):
        print(f"no Redis on {HOST}:{REDIS_PORT}: the Redis reads are left out of this run")
        return None
    from tests.support.redis_server import RedisDatabase

    database = RedisDatabase(f"bench-{uuid.uuid4().hex[:8]}")
    try:
        home = Home.make(work)
        home.settings = home.settings.model_copy(update={"online_store": SecretStr(database.url)})
        home.ctx = Context.create(home.settings, actor="benchmark")
        client = FeatureStoreClient(home.ctx, load_schema(home.settings))
        client.apply()
        offline = sorted(ingested.ctx.paths.offline.rglob("*.parquet"))
        client.push_online(pd.concat(pd.read_parquet(path) for path in offline))
        return online_reads(client, 1), online_reads(client, 100)
    finally:
        database.close()


def freshness_run(work: Path, records: int) -> tuple[list[float], list[float]]:
    """Landing to online, and a published record to online, in milliseconds.

    Files through the storage source, the broker and the function; records as
    a queue source sends them, one CloudEvent each in the RabbitMQ source's
    type, accepted by the broker ingress and delivered by its Trigger. One
    function and one broker serve both, as they do in ``falaj up``.
    """
    home = Home.make(work)
    landing = home.ctx.paths.landing
    landing.mkdir(parents=True, exist_ok=True)
    triggers = [
        TriggerSpec(
            name=f"{name}-to-ingest",
            broker="default",
            filter_attributes={"type": str(event_type)},
            subscriber="ingest",
        )
        for name, event_type in (
            ("storage", EventType.OBJECT_CREATED),
            ("records", EventType.RABBITMQ_MESSAGE),
        )
    ]
    source = ManagedProcess(
        name="storage-source",
        argv=[sys.executable, "-m", "eventing.storage_source", f"--watch={landing}"],
        env=home.env(),
        log_path=work / "storage-source.log",
        cwd=PROJECT_ROOT,
    )
    client = FeatureStoreClient(home.ctx, load_schema(home.settings))
    with _function(home, "ingest-fresh") as (_, url):
        dump_endpoints({"ingest": url}, work / "endpoints.json")
        with _broker(home, triggers):
            try:
                source.start()
                files = [_fresh_file(home, client, index) for index in range(FRESHNESS_FILES)]
            finally:
                source.stop()
            with EventPublisher(home.settings.broker_ingress, home.token) as publisher:
                streamed = _fresh_records(publisher, client, records)
    return files, streamed


def _fresh_file(home: Home, client: FeatureStoreClient, index: int) -> float:
    """Milliseconds from a 1,000-row file's rename into landing to its newest row online."""
    landing = home.ctx.paths.landing
    rows = generate_transactions(
        1_000, seed=100 + index, cards=1_000, start=DEFAULT_START + timedelta(days=400 + 40 * index)
    )
    newest = rows.sort_values("event_timestamp").iloc[-1]
    staged = landing / f".fresh-{index}.csv.tmp"
    rows.to_csv(staged, index=False)
    started = time.perf_counter()
    staged.rename(landing / f"fresh-{index}.csv")
    while client.online_features([newest["card_id"]])["amount"] != [newest["amount"]]:
        if time.perf_counter() - started > 60:
            raise RuntimeError(f"fresh-{index}.csv not online after 60 s")
        time.sleep(0.005)  # polling the online store: the thing being timed
    return (time.perf_counter() - started) * 1000


def _fresh_records(
    publisher: EventPublisher, client: FeatureStoreClient, records: int
) -> list[float]:
    """Milliseconds from publishing each record to the broker to that record online."""
    rows = generate_transactions(
        records, seed=7, cards=records, start=DEFAULT_START + timedelta(days=700)
    )
    times = []
    for row in rows.to_dict("records"):
        row["event_timestamp"] = row["event_timestamp"].isoformat()
        event = make_event(
            EventType.RABBITMQ_MESSAGE,
            StreamRecord.model_validate(row),
            region="me-central-1",
            source=RECORDS_SOURCE,
        )
        started = time.perf_counter()
        publisher.publish(event)
        while client.online_features([row["card_id"]])["amount"] != [row["amount"]]:
            if time.perf_counter() - started > 60:
                raise RuntimeError(f"record of {row['card_id']} not online after 60 s")
            time.sleep(0.002)  # polling the online store: the thing being timed
        times.append((time.perf_counter() - started) * 1000)
    return times


def _size(rows: int) -> str:
    return f"{rows // 1_000_000}m" if rows % 1_000_000 == 0 else f"{rows // 1000}k"


def _read_rows(store: str, one: list[float], hundred: list[float]) -> list[Row]:
    """p50 and p99 of one store's reads, for 1 and 100 entities."""
    return [
        Row(metric=f"online_{p}_ms_{store}_{n}", value=round(percentile(t, q), 3), unit="ms")
        for n, t in (("1", one), ("100", hundred))
        for p, q in (("p50", 50), ("p99", 99))
    ]


def run(quick: bool = False) -> list[Row]:
    sizes = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="falaj-bench-ingest-") as tmp:
        root = Path(tmp)
        seconds, peak, home = ingest_run(root / "main", sizes.rows, seed=1)
        peer = materialize_run(home, root / "peer")
        print(f"feast materialize of the same rows: {peer:.2f} s")
        client = FeatureStoreClient(home.ctx, load_schema(home.settings))
        sqlite_one = online_reads(client, 1)
        sqlite_hundred = online_reads(client, 100)
        redis = redis_reads(home, root / "redis")
        shutil.rmtree(root / "peer")
        large_peak = None
        if sizes.large_rows is not None:
            _, large_peak, large = ingest_run(root / "large", sizes.large_rows, seed=2)
            shutil.rmtree(large.work)
        many = None
        if sizes.many_cards:
            many, _, crowded = ingest_run(root / "many", sizes.rows, seed=3, cards=MANY_CARDS)
            shutil.rmtree(crowded.work)
        fresh, streamed = freshness_run(root / "fresh", sizes.records)
    label = _size(sizes.rows)
    rows_per_s = sizes.rows / seconds
    extra = (
        [
            Row(
                metric=f"rows_per_s_{label}_{MANY_CARDS // 1000}k_cards",
                value=round(sizes.rows / many),
                unit="rows/s",
            )
        ]
        if many
        else []
    )
    return [
        Row(
            metric=f"rows_per_s_{label}",
            value=round(rows_per_s),
            unit="rows/s",
            peer="feast_materialize",
            peer_value=round(sizes.rows / peer),
        ),
        Row(metric=f"peak_rss_mb_{label}", value=round(peak, 1), unit="MB"),
        *(
            [
                Row(
                    metric=f"peak_rss_mb_{_size(sizes.large_rows)}",
                    value=round(large_peak, 1),
                    unit="MB",
                )
            ]
            if sizes.large_rows is not None and large_peak is not None
            else []
        ),
        *extra,
        Row(metric="freshness_ms_1k", value=round(median(fresh), 1), unit="ms"),
        Row(metric="freshness_max_ms_1k", value=round(max(fresh), 1), unit="ms"),
        Row(metric="record_freshness_p50_ms", value=round(median(streamed), 1), unit="ms"),
        Row(metric="record_freshness_p99_ms", value=round(percentile(streamed, 99), 1), unit="ms"),
        *_read_rows("sqlite", sqlite_one, sqlite_hundred),
        *(_read_rows("redis", *redis) if redis else []),
    ]
