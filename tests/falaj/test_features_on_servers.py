"""The feature store client on the real servers: Redis online, the SQL registry on PostgreSQL.

One test run claims a Redis database and an ACL user of its own and creates a
PostgreSQL database of its own (tests/support/); all of them go at the end.
Every client here has a home of its own, so nothing can come from a local file:
what one client applied and pushed, another reads back through the servers.
"""

from __future__ import annotations

import os
import traceback
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import redis.exceptions
import sqlalchemy.exc

from falaj.context import Context
from falaj.feature_repo import load_repo
from falaj.features import FeatureStoreClient
from falaj.model_spec import ModelSpec
from falaj.runtime.processes import free_port
from falaj.schema import DType, FeatureSchema, load_schema
from falaj.settings import Settings
from tests.support import postgres_server, redis_server
from tests.support.postgres_server import PostgresDatabase
from tests.support.redis_server import RedisDatabase

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)


@dataclass(frozen=True)
class Servers:
    redis: RedisDatabase
    postgres: PostgresDatabase

    @property
    def passwords(self) -> tuple[str, str]:
        return self.redis.password, self.postgres.password


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """Redis and PostgreSQL for this run; missing, the tests are skipped -- or fail under CI."""
    problems = {
        f"Redis at {redis_server.HOST}:{redis_server.PORT}": redis_server.reachable(),
        f"PostgreSQL at {postgres_server.HOST}:{postgres_server.PORT} (user postgres)": (
            postgres_server.reachable()
        ),
    }
    missing = [f"{server}, got {problem}" for server, problem in problems.items() if problem]
    if missing:
        message = (
            f"expected {'; '.join(missing)}; start it (.ci/run starts PostgreSQL and Redis "
            "when they are down)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    run = uuid.uuid4().hex[:12]
    redis_db = RedisDatabase(run)
    try:
        postgres_db = PostgresDatabase(run, password=f"pg-pw-{uuid.uuid4().hex}")
    except BaseException:
        redis_db.close()
        raise
    try:
        yield Servers(redis_db, postgres_db)
    finally:
        postgres_db.close()
        redis_db.close()


@pytest.fixture(scope="module")
def schema() -> FeatureSchema:
    return load_schema(Settings())


@pytest.fixture(scope="module")
def fraud() -> ModelSpec:
    return load_repo(Settings()).model("fraud")


def client_in(home: Path, schema: FeatureSchema, servers: Servers) -> FeatureStoreClient:
    settings = Settings(
        home=home,
        online_store=servers.redis.url,  # type: ignore[arg-type]
        feature_registry=servers.postgres.url,  # type: ignore[arg-type]
    )
    return FeatureStoreClient(
        Context.create(settings, actor="test"),
        schema,
        load_repo(settings).models_of(schema.dataset),
    )


def typed_rows(schema: FeatureSchema, cards: Sequence[str], at: datetime) -> pd.DataFrame:
    """One typed row per card, as ingest hands them on; the card's index sets its amount."""
    pandas_types = {DType.FLOAT: "float64", DType.INT: "int64", DType.STRING: "object"}
    frame = pd.DataFrame(
        {
            schema.entity: list(cards),
            schema.timestamp: pd.Series([at] * len(cards)).astype("datetime64[ns, UTC]"),
        }
    )
    for name in schema.stored_features:
        dtype = schema.column(name).dtype
        if dtype is DType.STRING:
            frame[name] = "fuel"
        else:
            frame[name] = pd.Series(range(1, len(cards) + 1), dtype=pandas_types[dtype])
    return frame


def every_text(
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    *clients: FeatureStoreClient,
) -> str:
    """Everything a password could have leaked into: logs, output, audit logs."""
    out, err = capfd.readouterr()
    audits = [
        path.read_text()
        for client in clients
        for path in client.ctx.paths.audit.rglob("*")
        if path.is_file()
    ]
    return "\n".join([caplog.text, out, err, *audits])


def test_rows_pushed_through_redis_come_back_with_the_registry_on_postgres(
    tmp_path: Path,
    schema: FeatureSchema,
    fraud: ModelSpec,
    servers: Servers,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level("DEBUG")
    client = client_in(tmp_path / "a" / ".falaj", schema, servers)
    client.apply()
    cards = [f"card-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    assert client.push_online(typed_rows(schema, cards, T0)) == 3

    served = client.online_features([*cards, "card-never-seen"])
    assert served[schema.entity] == [*cards, "card-never-seen"]
    for name in fraud.features:  # the model's inputs are numbers: 1, 2, 3 by card
        assert served[name] == [1, 2, 3, None], name
    assert client.online_features(cards, fraud)["amount"] == [1, 2, 3]
    # The stores are the servers: Feast wrote its tables and keys there, and no
    # file of its own under the home.
    assert {"projects", "feature_views", "feature_services", "entities"} <= (
        servers.postgres.tables()
    )
    assert servers.redis.keys() >= len(cards)
    assert not (client.ctx.paths.feast / "registry.db").exists()
    assert not (client.ctx.paths.feast / "online.db").exists()
    text = every_text(caplog, capfd, client)
    assert all(password not in text for password in servers.passwords)


def test_a_second_client_sees_what_the_first_applied_and_pushed(
    tmp_path: Path, schema: FeatureSchema, fraud: ModelSpec, servers: Servers
) -> None:
    writer = client_in(tmp_path / "writer" / ".falaj", schema, servers)
    writer.apply()
    card = f"card-{uuid.uuid4().hex[:8]}"
    writer.push_online(typed_rows(schema, [card], T0))
    # Another home, as another process (training, the predictor) would have one.
    reader = client_in(tmp_path / "reader" / ".falaj", schema, servers)
    service = reader.store.get_feature_service("fraud_model")
    (projection,) = service.feature_view_projections
    assert [f.name for f in projection.features] == list(fraud.features)
    assert [e.name for e in reader.store.list_entities()] == ["card_id"]
    assert reader.online_features([card]) == writer.online_features([card])
    # A newer row pushed by the reader is what the writer serves next.
    later = typed_rows(schema, [card], T0 + timedelta(hours=1))
    first = fraud.features[0]
    later[first] = later[first] * 10
    assert reader.push_online(later) == 1
    assert writer.online_features([card])[first] == reader.online_features([card])[first]
    assert reader.online_features([card])[first] == [later[first].iloc[0]]
    assert reader.store.get_feature_view("transactions_features").name == "transactions_features"


def test_an_unreachable_store_fails_without_its_password(
    tmp_path: Path,
    schema: FeatureSchema,
    servers: Servers,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level("DEBUG")
    secret = f"pw-{uuid.uuid4().hex}"
    closed = free_port()  # nothing listens there: connections are refused at once
    registry = Settings(
        home=tmp_path / "pg" / ".falaj",
        feature_registry=f"postgresql://postgres:{secret}@127.0.0.1:{closed}/feast",  # type: ignore[arg-type]
    )
    online = Settings(
        home=tmp_path / "redis" / ".falaj",
        feature_registry=servers.postgres.url,  # type: ignore[arg-type]
        online_store=f"redis://falaj:{secret}@127.0.0.1:{closed}/0",  # type: ignore[arg-type]
    )
    no_registry = FeatureStoreClient(Context.create(registry, actor="test"), schema)
    with pytest.raises(sqlalchemy.exc.OperationalError) as registry_failed:
        no_registry.apply()  # the SQL registry connects when it is first used
    no_online = FeatureStoreClient(Context.create(online, actor="test"), schema)
    no_online.apply()  # a new feature view needs nothing of Redis yet
    with pytest.raises(redis.exceptions.ConnectionError) as online_failed:
        no_online.push_online(typed_rows(schema, ["card-unreachable"], T0))
    failures = [
        "".join(traceback.format_exception(failed.value))
        for failed in (registry_failed, online_failed)
    ]
    assert f"port {closed} failed" in failures[0]
    assert f"127.0.0.1:{closed}" in failures[1]
    text = "\n".join([*failures, every_text(caplog, capfd, no_registry, no_online)])
    assert secret not in text
