"""The router end to end, with real predictor processes, a real split and payload logging."""

from __future__ import annotations

import asyncio
import http.client
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from cloudevents.conversion import to_binary

from falaj.auth import Role
from falaj.context import Context
from falaj.deployments import DeploymentStore, TrafficSplit
from falaj.events import EventType, InferenceLogged, InferenceOutcome, ModelDeployed, make_event
from falaj.registry import MODEL_FILE
from falaj.runtime.processes import ManagedProcess, free_port, pid_alive
from inference.router import STICKY_HEADER, Variant, pick_variant, sticky_draw
from inference.session import CPU
from tests.inference.conftest import (
    FEATURES,
    WEIGHTS_V1,
    WEIGHTS_V2,
    BrokerStandIn,
    fraud_onnx,
    register,
    sample_rows,
    wait_until,
)
from tests.support.models import failing_onnx
from tests.support.router import kill_leftovers, predictor_pids, start_router_process

REQUESTS = 1000


def test_pick_variant_follows_the_percentage() -> None:
    split = TrafficSplit("fraud", 1, 2, 10)
    assert pick_variant(split, 9.999) is Variant.CANARY
    assert pick_variant(split, 10.0) is Variant.STABLE
    assert pick_variant(TrafficSplit("fraud", 1), 0.0) is Variant.STABLE
    rng = random.Random(5)
    canary = sum(pick_variant(split, rng.random() * 100) is Variant.CANARY for _ in range(10_000))
    assert 900 <= canary <= 1100


def test_a_sticky_draw_is_fixed_by_the_key_and_spread_like_the_split() -> None:
    split = TrafficSplit("fraud", 1, 2, 30)
    assert sticky_draw(split, "customer-7") == sticky_draw(split, "customer-7")
    keys = [f"customer-{i}" for i in range(10_000)]
    canary = sum(pick_variant(split, sticky_draw(split, k)) is Variant.CANARY for k in keys)
    # Binomial(10000, 0.3): sd 46; 2,800..3,200 is beyond 4 sd.
    assert 2800 <= canary <= 3200
    # A new canary is a new experiment: the groups are drawn afresh.
    next_canary = TrafficSplit("fraud", 1, 3, 30)
    moved = sum(sticky_draw(split, k) != sticky_draw(next_canary, k) for k in keys[:100])
    assert moved == 100


@dataclass
class RunningRouter:
    process: ManagedProcess
    url: str
    user: str
    viewer: str
    service: str
    #: Predictor PIDs a test saw (a scaled-to-zero one is gone from the status).
    predictor_pids: set[int] = field(default_factory=set)
    #: The clients a test opened (``client``), closed with the router.
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str) -> httpx.Client:
        """A keep-alive client of this router with ``token``; closed when the router stops."""
        opened = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0
        )
        self.clients.append(opened)
        return opened


RouterStarter = Callable[..., RunningRouter]


@pytest.fixture
def start_router(ctx: Context, broker: BrokerStandIn) -> Iterator[RouterStarter]:
    """Start ``inference.router`` with setting overrides; each is stopped with its predictors."""
    started: list[RunningRouter] = []

    def start(**overrides: object) -> RunningRouter:
        service = ctx.tokens.issue("router", Role.SERVICE)
        settings = ctx.settings.model_copy(
            update={
                "router_port": free_port(),
                "broker_url": broker.url,
                "token": service,
                **overrides,
            }
        )
        process = start_router_process(settings, ctx.paths.logs / "router.log")
        running = RunningRouter(
            process=process,
            url=f"http://127.0.0.1:{settings.router_port}",
            user=ctx.tokens.issue("analyst", Role.DATA_SCIENTIST),
            viewer=ctx.tokens.issue("watcher", Role.VIEWER),
            service=service,
        )
        started.append(running)
        return running

    yield start
    leftovers = [pid for running in started for pid in stop_router(running)]
    assert leftovers == [], "a router left predictor processes running"


def stop_router(running: RunningRouter) -> list[int]:
    """Stop the router; the predictors it started are its to stop: those left, killed."""
    for opened in running.clients:
        opened.close()
    seen_pids = running.predictor_pids | predictor_pids(running.url, running.viewer)
    running.process.stop()
    return kill_leftovers(seen_pids)


@pytest.fixture
def router(start_router: RouterStarter) -> RunningRouter:
    return start_router()


def reference(weights: tuple[float, ...], rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(fraud_onnx(weights), providers=[CPU])
    return np.asarray(session.run(["probability"], {"input": rows})[0]).reshape(-1)


def test_split_headers_auth_payload_log_and_a_refused_canary(
    ctx: Context, router: RunningRouter, broker: BrokerStandIn
) -> None:
    assert register(ctx, WEIGHTS_V1) == 1
    assert register(ctx, WEIGHTS_V2) == 2
    assert register(ctx, WEIGHTS_V1) == 3
    tampered = ctx.paths.registry / "fraud" / "3" / MODEL_FILE
    # Flipped, not overwritten: an overwrite with 0 changes nothing when the last
    # byte (the random GCM tag's) is 0 already, one run in 256.
    sealed = tampered.read_bytes()
    tampered.write_bytes(sealed[:-1] + bytes([sealed[-1] ^ 0xFF]))
    store = DeploymentStore(ctx)
    store.set(TrafficSplit("fraud", stable_version=1, canary_version=2, canary_percent=10))

    user = router.client(router.user)
    viewer = router.client(router.viewer)
    wait_until(lambda: user.get("/v2/health/ready").status_code == 200, 90, "both versions loaded")

    # -- auth and unknown models
    anonymous = httpx.post(f"{router.url}/v2/models/fraud/infer", json={"inputs": []})
    assert anonymous.status_code == 401 and "bearer token" in anonymous.json()["error"]
    forbidden = viewer.post("/v1/models/fraud:predict", json={"instances": []})
    assert forbidden.status_code == 403 and "may not predict" in forbidden.json()["error"]
    unknown = user.post("/v2/models/aml/infer", json={"inputs": []})
    assert unknown.status_code == 404 and "served models: fraud" in unknown.json()["error"]

    metadata = viewer.get("/v2/models/fraud").json()
    assert metadata["versions"] == ["1", "2"]
    assert metadata["traffic"]["canary_percent"] == 10
    assert metadata["inputs"][0]["shape"] == [-1, len(FEATURES)]
    assert {v["state"] for v in metadata["status"].values()} == {"ready"}
    assert viewer.get("/v2/models/fraud/ready").json()["ready"] is True

    # -- the split, over V2, each answer from the version its headers name
    rows = sample_rows(REQUESTS, seed=11)
    expected = {1: reference(WEIGHTS_V1, rows), 2: reference(WEIGHTS_V2, rows)}
    served: Counter[str] = Counter()
    for i, row in enumerate(rows):
        response = user.post(
            "/v2/models/fraud/infer",
            json={
                "inputs": [
                    {"name": "input", "shape": [1, 6], "datatype": "FP32", "data": row.tolist()}
                ]
            },
        )
        assert response.status_code == 200, response.text
        version = int(response.headers["x-falaj-model-version"])
        variant = response.headers["x-falaj-variant"]
        assert (version, variant) in {(1, "stable"), (2, "canary")}
        served[variant] += 1
        probability = response.json()["outputs"][0]["data"][0]
        assert probability == pytest.approx(float(expected[version][i]), rel=1e-5)
    # Binomial(1000, 0.10): mean 100, sd 9.5; 60..140 is beyond 4 sd.
    assert 60 <= served["canary"] <= 140, served

    # -- V1, pinned to the canary for debugging; a bad request passes through as 400
    pinned = user.post(
        "/v1/models/fraud:predict",
        json={"instances": [dict(zip(FEATURES, map(float, rows[0]), strict=True))]},
        headers={"x-falaj-version": "2"},
    )
    assert pinned.status_code == 200
    assert pinned.headers["x-falaj-variant"] == "canary"
    assert pinned.json()["predictions"][0] == pytest.approx(float(expected[2][0]), rel=1e-5)
    bad = user.post("/v1/models/fraud:predict", json={"instances": [[1.0, 2.0]]})
    assert bad.status_code == 400 and "expected 6 values, got 2" in bad.json()["error"]
    unserved = user.post(
        "/v1/models/fraud:predict",
        json={"instances": [[1.0] * 6]},
        headers={"x-falaj-version": "7"},
    )
    assert unserved.status_code == 400 and "served versions [1, 2]" in unserved.json()["error"]

    # -- payload logging: one event per successful prediction, with its inputs by feature
    wait_until(lambda: len(broker.received()) == REQUESTS + 1, 60, "every prediction logged")
    logged = [InferenceLogged.model_validate(e.get_data()) for e in broker.received()]
    assert {e["type"] for e in broker.received()} == {str(EventType.INFERENCE_LOGGED)}
    assert set(broker.authorizations) == {f"Bearer {router.service}"}
    by_variant = Counter(e.variant for e in logged)
    assert by_variant == {"stable": served["stable"], "canary": served["canary"] + 1}
    sent = {tuple(np.float32(v) for v in row) for row in rows}
    got = {
        tuple(np.float32(e.inputs[name][0]) for name in FEATURES)
        for e in logged
        if e.version in (1, 2)
    }
    assert sent == got
    assert len({e.inference_id for e in logged}) == len(logged)

    # -- a new canary whose artifact was tampered with: refused, the stable one serves on
    old_pids = {v: s["pid"] for v, s in viewer.get("/v2/models/fraud").json()["status"].items()}
    store.set(TrafficSplit("fraud", stable_version=1, canary_version=3, canary_percent=50))

    def canary_refused() -> bool:
        status = viewer.get("/v2/models/fraud").json()["status"]
        return status.get("3", {}).get("state") == "refused"

    wait_until(canary_refused, 60, "version 3 refused")
    status = viewer.get("/v2/models/fraud").json()["status"]
    assert "SignatureInvalid" in status["3"]["reason"]
    assert status["1"]["pid"] == old_pids["1"]  # stable untouched
    wait_until(lambda: not pid_alive(int(old_pids["2"])), 30, "version 2's predictor stopped")
    for row in rows[:40]:
        response = user.post("/v1/models/fraud:predict", json={"instances": [row.tolist()]})
        assert response.status_code == 200
        assert response.headers["x-falaj-model-version"] == "1"
        assert response.headers["x-falaj-variant"] == "stable"
    not_ready = user.get("/v2/health/ready")
    assert not_ready.status_code == 503
    assert not_ready.json()["not_ready"]["fraud/3"]["state"] == "refused"
    assert viewer.get("/v2/models/fraud/ready").status_code == 503
    refusals = [e for e in ctx.audit.entries() if e["action"] == "model.load.refused"]
    assert [(e["resource"], e["actor"]) for e in refusals] == [("model/fraud/3", "predictor")]


def test_sticky_keys_never_move_between_variants(ctx: Context, router: RunningRouter) -> None:
    assert register(ctx, WEIGHTS_V1) == 1
    assert register(ctx, WEIGHTS_V2) == 2
    DeploymentStore(ctx).set(
        TrafficSplit("fraud", stable_version=1, canary_version=2, canary_percent=30)
    )
    user = router.client(router.user)
    wait_until(lambda: user.get("/v2/health/ready").status_code == 200, 90, "both versions loaded")
    rows = sample_rows(1, seed=3)
    seen: dict[str, set[str]] = {}
    for _ in range(3):
        for i in range(150):
            key = f"customer-{i}"
            response = user.post(
                "/v1/models/fraud:predict",
                json={"instances": rows.tolist()},
                headers={STICKY_HEADER: key},
            )
            assert response.status_code == 200, response.text
            seen.setdefault(key, set()).add(response.headers["x-falaj-variant"])
    assert all(len(variants) == 1 for variants in seen.values()), seen
    canary_keys = sum(variants == {"canary"} for variants in seen.values())
    # Binomial(150, 0.3): mean 45, sd 5.6; 20..70 is beyond 4 sd.
    assert 20 <= canary_keys <= 70

    # The A/B report counts what each variant answered, the callers' mistakes apart.
    bad = user.post(
        "/v1/models/fraud:predict",
        json={"instances": [[1.0]]},
        headers={STICKY_HEADER: "customer-0"},
    )
    assert bad.status_code == 400
    assert httpx.get(f"{router.url}/v2/models/fraud/ab").status_code == 401
    viewer = router.client(router.viewer)
    report = viewer.get("/v2/models/fraud/ab").json()
    stable, canary = report["variants"]["v1 (stable)"], report["variants"]["v2 (canary)"]
    assert canary["requests"] == 3 * canary_keys + ("canary" in seen["customer-0"])
    assert stable["requests"] + canary["requests"] == 3 * 150 + 1
    assert stable["caller_errors"] + canary["caller_errors"] == 1
    assert stable["server_errors"] == canary["server_errors"] == 0
    assert report["comparison"]["error_rate"]["significant"] is False
    assert report["comparison"]["latency_ms"]["enough_data"] is True


def test_a_shadow_gets_every_request_and_no_caller_sees_its_answer(
    ctx: Context, router: RunningRouter, broker: BrokerStandIn
) -> None:
    assert register(ctx, WEIGHTS_V1) == 1
    assert register(ctx, WEIGHTS_V2) == 2
    with DeploymentStore(ctx) as store:
        store.set(TrafficSplit("fraud", stable_version=1, shadow_version=2))
    user = router.client(router.user)
    viewer = router.client(router.viewer)

    def shadow_ready() -> bool:
        shadow = viewer.get("/v2/models/fraud").json().get("shadow") or {}
        return shadow.get("state") == "ready"

    wait_until(lambda: user.get("/v2/health/ready").status_code == 200, 90, "version 1 loaded")
    wait_until(shadow_ready, 90, "the shadow loaded")
    requests = 200
    rows = sample_rows(requests, seed=5)
    expected = {1: reference(WEIGHTS_V1, rows), 2: reference(WEIGHTS_V2, rows)}
    for i, row in enumerate(rows):
        response = user.post(
            "/v1/models/fraud:predict",
            json={"instances": [dict(zip(FEATURES, map(float, row), strict=True))]},
        )
        assert response.status_code == 200, response.text
        # The caller always gets the stable version's answer, never the shadow's.
        assert (response.headers["x-falaj-model-version"], response.headers["x-falaj-variant"]) == (
            "1",
            "stable",
        )
        assert response.json()["predictions"][0] == pytest.approx(float(expected[1][i]), rel=1e-5)

    wait_until(lambda: len(broker.received()) == 2 * requests, 60, "both answers of each logged")
    logged = [InferenceLogged.model_validate(e.get_data()) for e in broker.received()]
    assert Counter((e.version, e.variant) for e in logged) == {
        (1, "stable"): requests,
        (2, "shadow"): requests,
    }
    # The shadow answered what version 2 computes, for the very rows callers sent.
    index = {tuple(np.float32(v) for v in row): i for i, row in enumerate(rows)}
    for event in logged:
        if event.variant == "shadow":
            i = index[tuple(np.float32(event.inputs[name][0]) for name in FEATURES)]
            assert event.outputs[0] == pytest.approx(float(expected[2][i]), rel=1e-5)


def v1_body(row: np.ndarray) -> dict[str, object]:
    return {"instances": [dict(zip(FEATURES, map(float, row), strict=True))]}


def test_a_ten_percent_canary_gets_ten_percent_and_outcomes_count_per_variant(
    ctx: Context, start_router: RouterStarter
) -> None:
    assert register(ctx, WEIGHTS_V1) == 1
    assert register(ctx, WEIGHTS_V2) == 2
    with DeploymentStore(ctx) as store:
        store.set(TrafficSplit("fraud", stable_version=1, canary_version=2, canary_percent=10))
    # No guard: its verdict on the outcomes below would end the split being measured.
    running = start_router(rollback_auto=False)
    user = running.client(running.user)
    viewer = running.client(running.viewer)
    wait_until(lambda: user.get("/v2/health/ready").status_code == 200, 90, "both versions loaded")

    requests = 5000
    rows = sample_rows(requests, seed=21)
    truth = reference(WEIGHTS_V1, rows) >= 0.5  # the stable version is right by construction
    answered: dict[str, tuple[str, float]] = {}
    for row in rows:
        response = user.post("/v1/models/fraud:predict", json=v1_body(row))
        assert response.status_code == 200, response.text
        answered[response.headers["x-falaj-inference-id"]] = (
            response.headers["x-falaj-variant"],
            response.json()["predictions"][0],
        )
    variants = Counter(variant for variant, _ in answered.values())
    assert len(answered) == requests  # every answer has its own inference id
    # 10% +- 2% of 5,000: Binomial(5000, 0.1) has sd 21, so 400..600 is beyond 4.7 sd.
    assert 400 <= variants["canary"] <= 600, variants

    # Predictions reach the metrics from the payload log, off the request path:
    # an outcome can only be credited once its prediction got there.
    def report() -> dict[str, dict[str, object]]:
        return viewer.get("/v2/models/fraud/ab").json()["variants"]

    wait_until(
        lambda: sum(v["predictions"]["count"] for v in report().values()) == requests,  # type: ignore[index]
        60,
        "every prediction reached the metrics through the payload log",
    )

    # Outcome feedback, as JSON and as an inference.outcome CloudEvent.
    ids = list(answered)
    labels = [{"inference_id": i, "label": int(t)} for i, t in zip(ids, truth, strict=True)]
    fed = user.post("/v2/models/fraud/outcomes", json=labels[:-1]).json()
    assert fed == {"received": requests - 1, "matched": requests - 1, "unmatched": 0}
    event = make_event(
        EventType.INFERENCE_OUTCOME,
        InferenceOutcome(inference_id=ids[-1], model="fraud", label=int(truth[-1])),
        region=ctx.settings.region,
    )
    headers, body = to_binary(event)
    fed_event = user.post("/v2/models/fraud/outcomes", content=body, headers=headers)
    assert fed_event.json()["matched"] == 1, fed_event.text
    unknown = user.post("/v2/models/fraud/outcomes", json={"inference_id": "nope", "label": 1})
    assert unknown.json()["unmatched"] == 1
    bad = user.post("/v2/models/fraud/outcomes", json={"inference_id": "x"})
    assert bad.status_code == 400 and "label" in bad.json()["error"]
    denied = viewer.post("/v2/models/fraud/outcomes", json=labels[:1])
    assert denied.status_code == 403

    ab = viewer.get("/v2/models/fraud/ab").json()
    stable, canary = ab["variants"]["v1 (stable)"], ab["variants"]["v2 (canary)"]
    assert stable["requests"] + canary["requests"] == requests
    assert canary["requests"] == variants["canary"]
    assert stable["outcomes"] == {"count": variants["stable"], "accuracy": 1.0}
    agreement = np.mean(
        [
            (p >= 0.5) == truth[k]
            for k, (variant, p) in enumerate(answered.values())
            if variant == "canary"
        ]
    )
    assert canary["outcomes"]["accuracy"] == pytest.approx(agreement)
    assert sum(canary["predictions"]["histogram"]) == variants["canary"]
    assert ab["comparison"]["accuracy"]["n_b"] == variants["canary"]


def test_a_canary_that_returns_errors_is_rolled_back_automatically(
    ctx: Context, start_router: RouterStarter, broker: BrokerStandIn
) -> None:
    assert register(ctx, WEIGHTS_V1) == 1
    assert register(ctx, WEIGHTS_V1, onnx_bytes=failing_onnx()) == 2
    store = DeploymentStore(ctx)
    store.set(TrafficSplit("fraud", stable_version=1, canary_version=2, canary_percent=50))
    running = start_router(rollback_min_requests=30)
    user = running.client(running.user)
    wait_until(lambda: user.get("/v2/health/ready").status_code == 200, 90, "both versions loaded")

    def canary() -> int | None:
        split = store.get("fraud")
        return None if split is None else split.canary_version

    rows = sample_rows(3000, seed=3)
    statuses: Counter[tuple[str, int]] = Counter()
    for row in rows:
        response = user.post("/v1/models/fraud:predict", json=v1_body(row))
        statuses[(response.headers.get("x-falaj-variant", "?"), response.status_code)] += 1
        if canary() is None:
            break
    assert canary() is None, f"the failing canary was never rolled back: {statuses}"
    assert statuses[("canary", 500)] >= 30 and statuses[("stable", 200)] >= 30
    assert ("canary", 200) not in statuses

    # Audited with the evidence (just after the store changed), and announced.
    def audited() -> list[dict[str, Any]]:
        return [e for e in ctx.audit.entries() if e["action"] == "model.rolled_back"]

    wait_until(lambda: len(audited()) == 1, 30, "the rollback audited")
    [entry] = audited()
    assert entry["actor"] == "router" and "error rate" in entry["details"]["reason"]
    assert entry["details"]["after"] == "stable version 1"
    wait_until(
        lambda: any(e["type"] == EventType.MODEL_DEPLOYED for e in broker.received()),
        30,
        "the rollback announced",
    )
    [announced] = [e for e in broker.received() if e["type"] == EventType.MODEL_DEPLOYED]
    deployed = ModelDeployed.model_validate(announced.get_data())
    assert (deployed.action, deployed.canary_version) == ("rollback", None)

    # From here on only the stable version answers.
    wait_until(
        lambda: user.get("/v2/models/fraud").json()["traffic"]["canary_version"] is None,
        30,
        "the router saw the new split",
    )
    for row in rows[:100]:
        response = user.post("/v1/models/fraud:predict", json=v1_body(row))
        assert (response.status_code, response.headers["x-falaj-variant"]) == (200, "stable")


@pytest.mark.parametrize(
    ("right", "action", "after", "audited"),
    [
        (WEIGHTS_V2, "promote", (2, None), "model.promoted"),
        (WEIGHTS_V1, "rollback", (1, None), "model.rolled_back"),
    ],
    ids=["better canary promoted", "worse canary rolled back"],
)
def test_the_router_promotes_a_canary_no_worse_and_rolls_back_a_less_accurate_one(
    ctx: Context,
    start_router: RouterStarter,
    broker: BrokerStandIn,
    right: tuple[float, ...],
    action: str,
    after: tuple[int, int | None],
    audited: str,
) -> None:
    """Outcomes decide: the labels are one version's own answers, so it is the accurate one."""
    assert register(ctx, WEIGHTS_V1) == 1
    assert register(ctx, WEIGHTS_V2) == 2
    store = DeploymentStore(ctx)
    store.set(TrafficSplit("fraud", stable_version=1, canary_version=2, canary_percent=50))
    running = start_router(rollback_min_requests=30, canary_min_outcomes=60)
    user, viewer = running.client(running.user), running.client(running.viewer)
    wait_until(lambda: user.get("/v2/health/ready").status_code == 200, 90, "both versions loaded")

    rows = sample_rows(300, seed=31)
    truth = reference(right, rows) >= 0.5
    ids = []
    for row in rows:
        response = user.post("/v1/models/fraud:predict", json=v1_body(row))
        assert response.status_code == 200, response.text
        ids.append(response.headers["x-falaj-inference-id"])

    def versions() -> tuple[int, int | None] | None:
        split = store.get("fraud")
        return None if split is None else (split.stable_version, split.canary_version)

    # Requests alone promote nothing: the outcomes are still to come.
    assert versions() == (1, 2)
    wait_until(
        lambda: (
            sum(
                v["predictions"]["count"]
                for v in viewer.get("/v2/models/fraud/ab").json()["variants"].values()
            )
            == len(rows)
        ),
        60,
        "every prediction reached the metrics",
    )
    labels = [{"inference_id": i, "label": int(t)} for i, t in zip(ids, truth, strict=True)]
    assert user.post("/v2/models/fraud/outcomes", json=labels).json()["matched"] == len(rows)

    wait_until(lambda: versions() == after, 30, f"the canary's {action}")
    # The audit entry is written just after the store changed.
    wait_until(
        lambda: any(e["action"] == audited for e in ctx.audit.entries()), 30, f"{audited} audited"
    )
    [entry] = [e for e in ctx.audit.entries() if e["action"] == audited]
    assert entry["actor"] == "router" and "accuracy" in entry["details"]["reason"]
    wait_until(
        lambda: any(e["type"] == EventType.MODEL_DEPLOYED for e in broker.received()),
        30,
        f"the {action} announced",
    )
    [announced] = [e for e in broker.received() if e["type"] == EventType.MODEL_DEPLOYED]
    assert ModelDeployed.model_validate(announced.get_data()).action == action


def test_a_scaled_to_zero_model_answers_its_next_requests(
    ctx: Context, start_router: RouterStarter
) -> None:
    assert register(ctx, WEIGHTS_V1) == 1
    with DeploymentStore(ctx) as store:
        store.set(TrafficSplit("fraud", stable_version=1))
    running = start_router(serving_idle_s=0.5)
    viewer = running.client(running.viewer)

    def state() -> dict[str, object]:
        status: dict[str, object] = viewer.get("/v2/models/fraud").json()["status"]["1"]
        if isinstance(status.get("pid"), int):
            running.predictor_pids.add(int(status["pid"]))  # type: ignore[arg-type]
        return status

    wait_until(lambda: state()["state"] == "ready", 90, "version 1 loaded")
    first_pid = int(state().get("pid") or 0)
    wait_until(lambda: state()["state"] == "scaled-to-zero", 30, "idle version 1 scaled to zero")
    wait_until(lambda: not pid_alive(first_pid), 30, "its process stopped")
    # Scaled to zero still counts as serving: probes must not take the router out.
    assert viewer.get("/v2/health/ready").status_code == 200

    rows = sample_rows(5, seed=8)
    expected = reference(WEIGHTS_V1, rows)

    async def five_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=running.url, headers={"Authorization": f"Bearer {running.user}"}, timeout=60
        ) as client:
            return await asyncio.gather(
                *(client.post("/v1/models/fraud:predict", json=v1_body(row)) for row in rows)
            )

    # Held while the version starts again (the activator), then answered.
    responses = asyncio.run(five_at_once())
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    for response, want in zip(responses, expected, strict=True):
        assert response.json()["predictions"][0] == pytest.approx(float(want), rel=1e-5)
    # One activation for all five: a single new predictor process, the
    # pre-warmed one, whose imports were done before the requests came.
    log = (ctx.paths.logs / "router.log").read_text()
    assert log.count('"backend.activating"') == 1
    starts = [json.loads(line) for line in log.splitlines() if '"backend.starting"' in line]
    assert [s["prewarmed"] for s in starts] == [True, True], starts
    state()
    assert len(running.predictor_pids) == 2


def test_bad_input_through_the_router_is_a_4xx_that_says_why_and_keeps_the_connection(
    ctx: Context, start_router: RouterStarter
) -> None:
    assert register(ctx, WEIGHTS_V1) == 1
    with DeploymentStore(ctx) as store:
        store.set(TrafficSplit("fraud", stable_version=1))
    running = start_router(serving_max_body_bytes=2048)
    auth = {"Authorization": f"Bearer {running.user}", "Content-Type": "application/json"}
    wait_until(lambda: httpx.get(f"{running.url}/v2/health/ready").status_code == 200, 90, "loaded")
    connection = http.client.HTTPConnection("127.0.0.1", int(running.url.rsplit(":", 1)[1]))

    def post(path: str, body: bytes, **extra: str) -> tuple[int, str]:
        connection.request("POST", path, body=body, headers={**auth, **extra})
        response = connection.getresponse()
        return response.status, response.read().decode()

    good = json.dumps(v1_body(sample_rows(1)[0])).encode()
    assert post("/v1/models/fraud:predict", good)[0] == 200
    socket_before = connection.sock
    cases = [
        ("/v2/models/fraud/infer", {"inputs": [tensor([1.0] * 5, [1, 5])]}, 400, "expected [N, 6]"),
        ("/v2/models/fraud/infer", {"inputs": []}, 400, "input"),
        ("/v2/models/fraud/infer", {"inputs": [tensor([1.0] * 6, [1, 6], "INT8")]}, 400, "FP32"),
        ("/v1/models/fraud:predict", {"instances": [{"amount": "much"}]}, 400, "amount"),
        ("/v1/models/fraud:predict", {"rows": []}, 400, "expected a V1 body"),
        ("/v1/models/aml:predict", {"instances": []}, 404, "served models: fraud"),
        ("/v1/models/fraud:predict", {"instances": [[0.5] * 6] * 100}, 413, "at most 2048 bytes"),
    ]
    for path, body, status, words in cases:
        got_status, text = post(path, json.dumps(body).encode())
        assert (got_status, words in text) == (status, True), (path, body, text)
    status, text = post("/v1/models/fraud:predict", good, **{"x-falaj-inference-id": "x" * 201})
    assert status == 400 and "at most 200 characters" in text
    # Every refusal left the keep-alive connection open: the same socket answers.
    assert post("/v1/models/fraud:predict", good)[0] == 200
    assert connection.sock is socket_before
    connection.close()


def tensor(data: list[float], shape: list[int], datatype: str = "FP32") -> dict[str, object]:
    return {"name": "input", "shape": shape, "datatype": datatype, "data": data}


def test_triton_binary_tensors_through_the_router_are_answered_and_logged(
    ctx: Context, router: RunningRouter, broker: BrokerStandIn
) -> None:
    import tritonclient.http as triton  # the HTTP client only: its gRPC one clashes with kserve

    assert register(ctx, WEIGHTS_V1) == 1
    with DeploymentStore(ctx) as store:
        store.set(TrafficSplit("fraud", stable_version=1))
    wait_until(lambda: httpx.get(f"{router.url}/v2/health/ready").status_code == 200, 90, "loaded")
    rows = sample_rows(3, seed=4)
    client = triton.InferenceServerClient(url=router.url.removeprefix("http://"))
    tensor = triton.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=True)
    wanted = triton.InferRequestedOutput("probability", binary_data=True)
    result = client.infer(
        "fraud",
        [tensor],
        outputs=[wanted],
        headers={"Authorization": f"Bearer {router.user}", "x-falaj-inference-id": "bin-1"},
    )
    client.close()
    np.testing.assert_allclose(
        result.as_numpy("probability").reshape(-1), reference(WEIGHTS_V1, rows), rtol=1e-5
    )
    # Binary in, binary out: the payload log still reads both.
    wait_until(lambda: len(broker.received()) == 1, 30, "the binary prediction logged")
    logged = InferenceLogged.model_validate(broker.received()[0].get_data())
    assert logged.inference_id == "bin-1"
    assert logged.inputs["amount"] == pytest.approx(rows[:, 0].tolist())
    assert logged.outputs == pytest.approx(reference(WEIGHTS_V1, rows).tolist(), rel=1e-5)


def test_every_role_gets_what_the_access_table_gives_it_and_no_more(
    ctx: Context, router: RunningRouter
) -> None:
    """Each (role, endpoint) cell: 403 where the role lacks the action, else past the check
    (404: no model is served here, which only an authorized caller may learn)."""
    from falaj.auth import PERMISSIONS, Action

    cells = {
        ("POST", "/v2/models/nope/infer", Action.PREDICT),
        ("POST", "/v1/models/nope:predict", Action.PREDICT),
        ("POST", "/v2/models/nope/outcomes", Action.PREDICT),
        ("GET", "/v2/models/nope", Action.READ),
        ("GET", "/v2/models/nope/ready", Action.READ),
        ("GET", "/v2/models/nope/ab", Action.READ),
        ("GET", "/metrics", Action.READ),
    }
    seen: dict[tuple[str, str, str], int] = {}
    expected: dict[tuple[str, str, str], int] = {}
    with httpx.Client(base_url=router.url, timeout=10) as client:
        for role in Role:
            token = ctx.tokens.issue(f"someone-{role}", role)
            for method, path, action in cells:
                response = client.request(
                    method, path, json={}, headers={"Authorization": f"Bearer {token}"}
                )
                seen[(str(role), method, path)] = response.status_code
                allowed_status = 200 if path == "/metrics" else 404
                expected[(str(role), method, path)] = (
                    allowed_status if action in PERMISSIONS[role] else 403
                )
        for method, path, _ in cells:
            anonymous = client.request(method, path, json={})
            assert anonymous.status_code == 401
            assert anonymous.headers["www-authenticate"] == "Bearer"
    assert seen == expected
    # Every refusal is audited, with the caller where the token was good.
    refused = [e for e in ctx.audit.entries() if e["action"] == "auth.refused"]
    assert len(refused) == sum(1 for s in seen.values() if s == 403) + len(cells)
    assert {e["actor"] for e in refused} >= {"someone-viewer", "unknown"}


def test_a_payload_log_destination_outside_the_allowed_regions_stops_the_router_at_start(
    ctx: Context,
) -> None:
    """KServe's logger URL, locally the broker the payload log posts to: a sink boundary."""
    from falaj.errors import ResidencyViolation
    from inference.router import build_router

    foreign = ctx.settings.model_copy(
        update={"broker_url": "https://svc:s3cret@events.example.eu/falaj/default"}
    )
    router_ctx = Context.create(foreign, actor="router")
    with pytest.raises(ResidencyViolation) as refused:
        build_router(router_ctx, {})
    message = str(refused.value)
    assert "sink: router events (FALAJ_BROKER_URL) -> https://***@events.example.eu" in message
    assert "has no known region" in message and "s3cret" not in message
    [entry] = [e for e in ctx.audit.entries() if e["action"] == "policy.refused"]
    assert entry["actor"] == "router" and entry["details"]["boundary"] == "sink"
    assert "s3cret" not in json.dumps(entry)

    # Declared in an allowed region, the same destination is fine.
    declared = foreign.model_copy(
        update={"storage_regions": {"https://events.example.eu": "me-central-1"}}
    )
    build_router(Context.create(declared, actor="router"), {}).pool.store.close()
