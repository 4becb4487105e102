"""Requests that name entities: the predictor reads their features from the real Feast.

The online store is Feast's SQLite store in a temp home (Redis in the
integration test at the end), filled the way ingest fills it
(``FeatureStoreClient.apply`` and ``push_online``). Every prediction by entity
id must equal, bit for bit, the prediction of the features the store holds for
that entity given directly; an id the store does not know is a 400 that names
it, never a 500.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from kserve import InferenceGRPCClient, InferInput, InferRequest, InferResponse
from kserve.errors import InvalidInput, ModelNotReady

from falaj.context import Context
from falaj.demo.data import generate_transactions
from falaj.feature_repo import load_repo
from falaj.features import FeatureStoreClient, feature_service_name
from falaj.profile import ReferenceProfile
from falaj.registry import ModelRegistry
from falaj.settings import PROJECT_ROOT, Settings
from falaj.validation import validate_frame
from inference.predictor import OnlineFeaturesMode, OnnxPredictor, ServingOptions
from tests.inference.conftest import FEATURES, WEIGHTS_V1, GrpcStarter, fraud_onnx, register
from tests.support import redis_server
from tests.support.redis_server import RedisDatabase

ENTITY = "card_id"
CARDS = 12


@dataclass(frozen=True)
class Online:
    """A platform home whose online store holds the newest row of each card."""

    ctx: Context
    #: One row per card, the one the online store serves.
    newest: pd.DataFrame

    @property
    def cards(self) -> list[str]:
        return self.newest[ENTITY].tolist()

    def features_of(self, cards: Sequence[str]) -> list[dict[str, float]]:
        """The V1 rows of ``cards``' online features, given directly."""
        by_card = self.newest.set_index(ENTITY)
        return [{name: float(by_card.loc[card, name]) for name in FEATURES} for card in cards]


def fill_online_store(ctx: Context, *, seed: int) -> Online:
    """Apply the feature repository and push a generated day of transactions, as ingest does."""
    repo = load_repo(ctx.settings)
    schema = repo.dataset("transactions")
    client = FeatureStoreClient(ctx, schema, repo.models_of(schema.dataset))
    client.apply()
    rows = validate_frame(schema, generate_transactions(120, seed=seed, cards=CARDS)).good
    assert client.push_online(rows) == CARDS
    ts = schema.timestamp
    newest = rows.sort_values(ts, kind="mergesort").drop_duplicates(ENTITY, keep="last")
    return Online(ctx, newest.sort_values(ENTITY).reset_index(drop=True))


@pytest.fixture(scope="module")
def online(tmp_path_factory: pytest.TempPathFactory) -> Online:
    """One home for the module: Feast's import and first apply cost seconds."""
    home = tmp_path_factory.mktemp("entity-requests") / ".falaj"
    return fill_online_store(Context.create(Settings(home=home), actor="test"), seed=21)


def load(ctx: Context, version: int, **options: Any) -> OnnxPredictor:
    predictor = OnnxPredictor(
        ctx, model="fraud", version=version, options=ServingOptions(**options)
    )
    assert predictor.load() is True
    return predictor


@pytest.fixture(scope="module")
def predictor(online: Online) -> OnnxPredictor:
    return load(online.ctx, register(online.ctx, WEIGHTS_V1))


def by_id(cards: Sequence[str]) -> dict[str, Any]:
    return {"instances": [{ENTITY: card} for card in cards]}


def predictions(predictor: OnnxPredictor, payload: dict[str, Any]) -> np.ndarray:
    answer = predictor.predict(payload)
    assert isinstance(answer, dict)
    return np.asarray(answer["predictions"], dtype=np.float64)


def bytes_request(cards: Sequence[Any]) -> InferRequest:
    return InferRequest(
        model_name="fraud",
        infer_inputs=[InferInput(ENTITY, [len(cards)], "BYTES", data=list(cards))],
    )


def outputs(response: Any) -> np.ndarray:
    assert isinstance(response, InferResponse)
    (output,) = response.outputs
    return np.asarray(output.data, dtype=np.float64)


# -- in process ---------------------------------------------------------------------


def test_v1_entity_ids_predict_exactly_what_their_features_predict(
    online: Online, predictor: OnnxPredictor
) -> None:
    cards = online.cards
    expected = predictions(predictor, {"instances": online.features_of(cards)})
    np.testing.assert_array_equal(predictions(predictor, by_id(cards)), expected)
    # Order, repeats and a single id are kept as asked.
    asked = [cards[3], cards[0], cards[3]]
    np.testing.assert_array_equal(
        predictions(predictor, by_id(asked)), expected[[3, 0, 3]], strict=True
    )
    assert predictor.entity_key == ENTITY
    assert predictor.online is not None and predictor.online.source.spec is not None


def test_v2_bytes_tensor_of_ids_predicts_what_the_features_predict(
    online: Online, predictor: OnnxPredictor
) -> None:
    cards = online.cards[:5]
    rows = np.asarray([list(r.values()) for r in online.features_of(cards)], dtype=np.float32)
    features = InferRequest(
        model_name="fraud",
        infer_inputs=[InferInput("input", [5, 6], "FP32", data=rows.ravel().tolist())],
    )
    expected = outputs(predictor.predict(features))
    np.testing.assert_array_equal(outputs(predictor.predict(bytes_request(cards))), expected)
    # As gRPC and binary REST deliver them: bytes.
    as_bytes = bytes_request([card.encode() for card in cards])
    np.testing.assert_array_equal(outputs(predictor.predict(as_bytes)), expected)


def test_unknown_ids_are_a_400_that_names_them(online: Online, predictor: OnnxPredictor) -> None:
    with pytest.raises(InvalidInput) as caught:
        predictor.predict(by_id([online.cards[0], "card-unknown-1", "card-unknown-2"]))
    message = str(caught.value)
    assert message.startswith(
        "not found: no features in the online store for card_id 'card-unknown-1', 'card-unknown-2'"
    )
    assert online.cards[0] not in message
    with pytest.raises(InvalidInput, match="for card_id 'nobody'"):
        predictor.predict(bytes_request(["nobody"]))


def test_ids_mixed_with_features_are_refused(online: Online, predictor: OnnxPredictor) -> None:
    (row,) = online.features_of(online.cards[:1])
    with pytest.raises(InvalidInput, match=r"row 0: expected 'card_id' alone, got also \['amount'"):
        predictor.predict({"instances": [{ENTITY: online.cards[0], **row}]})
    with pytest.raises(InvalidInput, match="row 1: expected an object with 'card_id'"):
        predictor.predict({"instances": [{ENTITY: online.cards[0]}, row]})


def test_a_version_trained_on_other_features_reads_its_own(online: Online) -> None:
    """The spec has moved on since: the version's own features are read, by name."""
    features = ("tx_count_24h", "amount", "is_foreign")
    entry = ModelRegistry(online.ctx).register(
        "fraud",
        onnx_bytes=fraud_onnx((0.2, 0.003, 1.1)),
        profile=ReferenceProfile.from_columns({"amount": np.arange(50.0)}),
        metrics={},
        lineage={"dataset": "transactions", "feature_service": feature_service_name("fraud")},
        feature_names=features,
    )
    predictor = load(online.ctx, entry.version)
    assert predictor.online is not None and predictor.online.source.spec is None
    by_card = online.newest.set_index(ENTITY)
    direct = [[float(by_card.loc[c, name]) for name in features] for c in online.cards]
    np.testing.assert_array_equal(
        predictions(predictor, by_id(online.cards)),
        predictions(predictor, {"instances": direct}),
    )


def test_a_version_whose_features_are_gone_takes_features_only(online: Online) -> None:
    entry = ModelRegistry(online.ctx).register(
        "fraud",
        onnx_bytes=fraud_onnx((0.01, 0.5)),
        profile=ReferenceProfile.from_columns({"amount": np.arange(50.0)}),
        metrics={},
        lineage={"dataset": "transactions"},
        feature_names=("amount", "velocity_7d"),
    )
    predictor = load(online.ctx, entry.version)
    with pytest.raises(InvalidInput) as caught:
        predictor.predict(by_id(online.cards[:1]))
    assert "its features ['velocity_7d'] are no longer stored by dataset 'transactions'" in str(
        caught.value
    )
    assert predictions(predictor, {"instances": [[10.0, 1.0]]}).shape == (1,)


def test_online_features_off_refuses_ids_and_serves_features(online: Online) -> None:
    predictor = load(
        online.ctx, register(online.ctx, WEIGHTS_V1), online_features=OnlineFeaturesMode.OFF
    )
    assert predictor.online is None
    with pytest.raises(InvalidInput, match=r"entity requests are off on this server"):
        predictor.predict(by_id(online.cards[:1]))
    assert predictions(predictor, {"instances": online.features_of(online.cards[:2])}).shape == (2,)


def test_eager_opens_the_store_at_load(online: Online) -> None:
    lazy = load(online.ctx, register(online.ctx, WEIGHTS_V1))
    eager = load(
        online.ctx, register(online.ctx, WEIGHTS_V1), online_features=OnlineFeaturesMode.EAGER
    )
    assert lazy.online is not None and lazy.online._client is None
    assert eager.online is not None and eager.online._client is not None


def test_a_store_that_cannot_be_read_is_a_503_not_a_500(ctx: Context) -> None:
    """A fresh home: nothing applied, so the model's feature service is not registered."""
    predictor = load(ctx, register(ctx, WEIGHTS_V1))
    with pytest.raises(ModelNotReady) as caught:
        predictor.predict(by_id(["card-00001"]))
    assert "the online feature store cannot be read" in str(caught.value)
    assert "'fraud_model' of model 'fraud' is not registered" in str(caught.value)
    # Features still work.
    assert predictions(predictor, {"instances": [[1.0] * len(FEATURES)]}).shape == (1,)


LAZY_IMPORT_CHECK = """
import json, sys
from falaj.context import Context
from falaj.settings import Settings
from inference.predictor import OnnxPredictor

ask = json.load(sys.stdin)
ctx = Context.create(Settings(home=ask["home"]), actor="test")
predictor = OnnxPredictor(ctx, model="fraud", version=ask["version"])
told = {"loaded": predictor.load(), "entity": predictor.entity_key}
told["feast_after_load"] = "feast" in sys.modules
predictor.predict({"instances": [[1.0] * 6]})
told["feast_after_features"] = "feast" in sys.modules
print(json.dumps(told))
"""


def test_a_server_that_gets_no_entity_request_never_imports_feast(
    online: Online, predictor: OnnxPredictor
) -> None:
    """In a fresh process, as a predictor server starts: its cold start does not pay for Feast.

    (The first entity request imports it: ``test_eager_opens_the_store_at_load``
    and the served test below.)
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FALAJ_")}
    done = subprocess.run(
        [sys.executable, "-c", LAZY_IMPORT_CHECK],
        input=json.dumps({"home": str(online.ctx.settings.home), "version": predictor.version}),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    told = json.loads(done.stdout.strip().splitlines()[-1])
    assert told == {
        "loaded": True,
        "entity": ENTITY,
        "feast_after_load": False,
        "feast_after_features": False,
    }


# -- over the wire ------------------------------------------------------------------


def _local_port(response: httpx.Response) -> int:
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])


def test_served_entity_requests_over_rest_and_grpc(
    ctx: Context, start_predictor_grpc: GrpcStarter, caller_headers: dict[str, str]
) -> None:
    served = fill_online_store(ctx, seed=33)
    version = register(ctx, WEIGHTS_V1)
    _, port, grpc_port = start_predictor_grpc(version)
    cards = served.cards[:4]
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=60.0, headers=caller_headers) as client:
        direct = client.post(
            "/v1/models/fraud:predict", json={"instances": served.features_of(cards)}
        )
        assert direct.status_code == 200, direct.text
        # The first entity request imports Feast in the server: it may take seconds.
        v1 = client.post("/v1/models/fraud:predict", json=by_id(cards))
        assert v1.status_code == 200, v1.text
        assert v1.json()["predictions"] == direct.json()["predictions"]

        v2 = client.post(
            "/v2/models/fraud/infer",
            json={"inputs": [{"name": ENTITY, "datatype": "BYTES", "shape": [4], "data": cards}]},
        )
        assert v2.status_code == 200, v2.text
        assert v2.json()["outputs"][0]["data"] == direct.json()["predictions"]
        assert v2.json()["parameters"] == {"model_variant": "fp32"}

        unknown = client.post("/v1/models/fraud:predict", json=by_id(["card-that-never-was"]))
        assert unknown.status_code == 400
        assert "for card_id 'card-that-never-was'" in unknown.json()["error"]
        # A 400, not a 500: the connection is kept.
        assert _local_port(unknown) == _local_port(v1)

    async def by_grpc(ids: list[str]) -> InferResponse:
        grpc = InferenceGRPCClient(f"127.0.0.1:{grpc_port}", timeout=30)
        try:
            metadata = [(k.lower(), v) for k, v in caller_headers.items()]
            return await grpc.infer(bytes_request(ids), headers=metadata)
        finally:
            await grpc.close()

    np.testing.assert_array_equal(
        outputs(asyncio.run(by_grpc(cards))), np.asarray(direct.json()["predictions"])
    )


# -- Redis ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_db() -> Iterator[RedisDatabase]:
    """A Redis database of this run; without Redis, skipped -- or failed under CI."""
    problem = redis_server.reachable()
    if problem is not None:
        message = (
            f"expected Redis at {redis_server.HOST}:{redis_server.PORT}, got {problem}; start it "
            "(.ci/run starts it when it is down)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    database = RedisDatabase(uuid.uuid4().hex[:12])
    try:
        yield database
    finally:
        database.close()


@pytest.mark.integration
def test_entity_requests_read_redis(tmp_path: Path, redis_db: RedisDatabase) -> None:
    settings = Settings(home=tmp_path / ".falaj", online_store=redis_db.url)  # type: ignore[arg-type]
    served = fill_online_store(Context.create(settings, actor="test"), seed=44)
    assert redis_db.keys() > 0  # the rows are in Redis, not in a local file
    predictor = load(served.ctx, register(served.ctx, WEIGHTS_V1))
    cards = served.cards
    np.testing.assert_array_equal(
        predictions(predictor, by_id(cards)),
        predictions(predictor, {"instances": served.features_of(cards)}),
    )
    with pytest.raises(InvalidInput, match="for card_id 'card-not-in-redis'"):
        predictor.predict(by_id([cards[0], "card-not-in-redis"]))
