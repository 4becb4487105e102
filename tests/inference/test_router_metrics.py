"""The router's ``/metrics``: requests and latency per model, version and variant; the guard's
verdicts; the payload log. One router process, with real predictors behind it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr

from falaj.auth import Role
from falaj.context import Context
from falaj.deployments import DeploymentStore, TrafficSplit
from falaj.metrics import METRIC_NAMES
from falaj.runtime.processes import free_port
from tests.inference.conftest import (
    FEATURES,
    WEIGHTS_V1,
    BrokerStandIn,
    register,
    sample_rows,
    wait_until,
)
from tests.support.metrics import scrape
from tests.support.models import failing_onnx
from tests.support.router import kill_leftovers, predictor_pids, start_router_process


@pytest.fixture
def router_url(ctx: Context, broker: BrokerStandIn) -> Iterator[str]:
    """``inference.router`` on a free port; stopped by PID, with the predictors it started."""
    port = free_port()
    settings = ctx.settings.model_copy(
        update={
            "router_port": port,
            "broker_url": broker.url,
            "token": SecretStr(ctx.tokens.issue("router", Role.SERVICE)),
            "rollback_min_requests": 30,
        }
    )
    process = start_router_process(settings, ctx.paths.logs / "router.log")
    url = f"http://127.0.0.1:{port}"
    pids: set[int] = set()
    try:
        yield url
        pids = predictor_pids(url, ctx.tokens.issue("cleaner", Role.VIEWER))
    finally:
        process.stop()
    leftovers = kill_leftovers(pids)
    assert leftovers == [], "the router left predictor processes running"


def test_requests_latency_verdicts_and_the_payload_log_per_model_version_and_variant(
    ctx: Context, router_url: str, broker: BrokerStandIn
) -> None:
    assert register(ctx, WEIGHTS_V1) == 1
    assert register(ctx, WEIGHTS_V1, onnx_bytes=failing_onnx()) == 2
    store = DeploymentStore(ctx)
    store.set(TrafficSplit("fraud", stable_version=1, canary_version=2, canary_percent=50))
    caller = ctx.tokens.issue("analyst", Role.DATA_SCIENTIST)
    viewer = ctx.tokens.issue("watcher", Role.VIEWER)
    anonymous = httpx.get(f"{router_url}/metrics")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"

    answered: Counter[tuple[str, str, int]] = Counter()
    with httpx.Client(
        base_url=router_url, headers={"Authorization": f"Bearer {caller}"}, timeout=30
    ) as client:
        wait_until(
            lambda: client.get("/v2/health/ready").status_code == 200, 90, "both versions loaded"
        )
        assert client.post("/v1/models/aml:predict", json={"instances": []}).status_code == 404
        for row in sample_rows(400, seed=9):
            response = client.post(
                "/v1/models/fraud:predict",
                json={"instances": [dict(zip(FEATURES, map(float, row), strict=True))]},
            )
            answered[
                (
                    response.headers["x-falaj-model-version"],
                    response.headers["x-falaj-variant"],
                    response.status_code,
                )
            ] += 1
            split = store.get("fraud")
            if split is not None and split.canary_version is None:
                break  # the guard rolled the failing canary back
    assert set(answered) == {("1", "stable", 200), ("2", "canary", 500)}, answered

    scraped = scrape(f"{router_url}/metrics", viewer)
    for (version, variant, code), count in answered.items():
        labels = {"model": "fraud", "version": version, "variant": variant}
        assert scraped.value("falaj_inference_requests_total", **labels, code=str(code)) == count
        assert scraped.value("falaj_inference_request_seconds_count", **labels) == count
        assert scraped.value("falaj_inference_request_seconds_sum", **labels) > 0
    # A name no model is served under is the caller's text: never a label.
    assert not any(("model", "aml") in labels for _, labels in scraped.samples)
    assert scraped.names() <= METRIC_NAMES

    def now(name: str, **labels: str) -> float:
        return scrape(f"{router_url}/metrics", viewer).value(name, **labels)

    # The guard counts its verdict just after it stores the split the loop above saw.
    wait_until(
        lambda: now("falaj_canary_verdicts_total", model="fraud", action="rollback") == 1,
        10,
        "the rollback counted",
    )
    stable_answers = answered[("1", "stable", 200)]
    wait_until(
        lambda: now("falaj_payload_log_events_total", outcome="sent") == stable_answers,
        30,
        "every answer logged",
    )
    assert len(broker.received()) >= stable_answers  # and the rollback's announcement
