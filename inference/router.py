"""The local KServe ingress: authentication, the traffic split, payload logging.

    python -m inference.router        (FALAJ_* settings; listens on host:router_port)

Every inference request is authenticated (bearer token, ``predict``; metadata
needs ``read``), then sent to the stable or the canary model version of the
model's traffic split — the canary gets ``canary_percent`` of the requests,
drawn with the router's own random generator — and answered with the
predictor's own response plus ``x-falaj-model-version`` and
``x-falaj-variant``. ``x-falaj-version: N`` pins a served version (debugging).
``x-falaj-ab-key: K`` makes the assignment sticky for an A/B test: the draw is a
hash of the key, the model and the canary version (the experiment), so the
same key always meets the same variant while that canary runs, on every router
replica. When the chosen version cannot serve (refused artifact, still
starting), the other version of the split answers, so one bad version never
takes the model down; a sticky key does not move, it gets a 503 instead, so
the experiment's groups stay clean. Health endpoints are open, as kubelet probes carry no token.

Every answer carries ``x-falaj-inference-id`` (the caller's, if it sent one):
the payload log and outcome feedback (``POST /v2/models/<model>/outcomes``)
refer to it. A version scaled to zero is started by the request that needs it,
which is held until it is ready (Knative's activator). While a canary serves,
a guard compares it with the stable version every second and rolls it back,
audited and announced, when the rollback policy says it is worse.

``GET /metrics`` (``read``) serves ``falaj.metrics``: every inference request to
a served model by version, variant and status code, with its end-to-end time,
the guard's verdicts and the payload log's counts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hashlib
import logging
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from falaj.auth import Action
from falaj.context import Context
from falaj.deployments import DeploymentStore, TrafficSplit
from falaj.errors import AuthError, FalajError
from falaj.events import MAX_INFERENCE_ID
from falaj.logs import configure_logging, get_logger
from falaj.metrics import CONTENT_TYPE, Metrics
from falaj.publisher import EventPublisher
from falaj.registry import ModelRegistry
from falaj.rollouts import (
    CanaryPolicy,
    CanaryVerdict,
    RolloutAction,
    Rollouts,
    RolloutStep,
    announcement,
)
from falaj.settings import PROJECT_ROOT, Settings
from falaj.tls import client_verify, uvicorn_options
from inference.backends import Backend, BackendPool, BackendState, PoolConfig
from inference.binary_tensors import HEADER as BINARY_HEADER
from inference.errors import InvalidPayload, UpstreamError
from inference.inputs import DATATYPE, INPUT_NAME, OUTPUT_NAME
from inference.outcomes import parse_outcomes
from inference.payload_log import PayloadLogger, Prediction, Protocol
from inference.upstream import Upstream
from inference.variant_metrics import ServingMetrics

VERSION_HEADER = "x-falaj-model-version"
VARIANT_HEADER = "x-falaj-variant"
PIN_HEADER = "x-falaj-version"
STICKY_HEADER = "x-falaj-ab-key"
INFERENCE_ID_HEADER = "x-falaj-inference-id"
#: How often the guard judges each canary against its stable version.
GUARD_INTERVAL_S = 1.0
SOURCE = "/falaj/inference/router"
#: Request headers a predictor needs: the caller's token (the predictor admits the
#: caller itself, as behind KServe's ingress) and what reads the body (binary V2 tensors).
FORWARDED_HEADERS = ("authorization", "content-type", BINARY_HEADER)


class Variant(StrEnum):
    STABLE = "stable"
    CANARY = "canary"
    #: Gets a copy of each request; its answers are logged, never returned.
    SHADOW = "shadow"


def pick_variant(split: TrafficSplit, draw: float) -> Variant:
    """``draw`` is uniform in [0, 100): below ``canary_percent`` means the canary."""
    if split.canary_version is not None and draw < split.canary_percent:
        return Variant.CANARY
    return Variant.STABLE


def sticky_draw(split: TrafficSplit, key: str) -> float:
    """A draw in [0, 100) fixed by ``key`` for this model's current canary (the experiment).

    SHA-256, not Python's ``hash``: the same on every replica and every restart.
    """
    experiment = f"{split.model}\x00{split.canary_version}\x00{key}".encode()
    bucket = int.from_bytes(hashlib.sha256(experiment).digest()[:8], "big")
    return bucket / 2**64 * 100.0


def version_of(split: TrafficSplit, variant: Variant) -> int:
    if variant is Variant.CANARY and split.canary_version is not None:
        return split.canary_version
    return split.stable_version


def variant_of(split: TrafficSplit, version: int) -> Variant:
    return Variant.CANARY if version == split.canary_version else Variant.STABLE


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


@dataclass
class Router:
    """The request handlers over a backend pool (one per router process)."""

    ctx: Context
    pool: BackendPool
    payloads: PayloadLogger
    registry: ModelRegistry
    rng: random.Random
    #: The predictors' client (aiohttp, keep-alive), opened with the app.
    upstream: Upstream
    serving_metrics: ServingMetrics
    rollouts: Rollouts
    #: Announces what the guard did (``model.deployed``).
    publisher: EventPublisher
    #: What ``/metrics`` serves (``falaj.metrics``).
    metrics: Metrics

    def __post_init__(self) -> None:
        self.log = get_logger(component="router")
        self._features: dict[tuple[str, int], tuple[str, ...]] = {}
        # The mirrored requests in flight: the loop keeps only weak references.
        self._shadows: set[asyncio.Task[None]] = set()
        # One activation per scaled-to-zero version, awaited by every request that needs it.
        self._activations: dict[tuple[str, int], asyncio.Task[None]] = {}
        self.canary_policy = CanaryPolicy.from_settings(self.ctx.settings)

    def features(self, model: str, version: int) -> tuple[str, ...]:
        # A version's metadata never changes once registered.
        key = (model, version)
        if key not in self._features:
            self._features[key] = self.registry.get(model, version).feature_names
        return self._features[key]

    # -- checks ----------------------------------------------------------------------

    def authorize(self, request: Request, action: Action) -> JSONResponse | None:
        try:
            self.ctx.admit(
                request.headers.get("authorization"),
                action,
                resource=f"router {request.method} {request.url.path}",
            )
        except AuthError as exc:
            response = error(int(exc.status), str(exc))
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return None

    def authorized_split(self, request: Request, action: Action) -> TrafficSplit | JSONResponse:
        """The split of the model the path names, for a caller allowed ``action``; else the 4xx."""
        denied = self.authorize(request, action)
        return denied if denied is not None else self.split_or_404(request.path_params["name"])

    def split_or_404(self, name: str) -> TrafficSplit | JSONResponse:
        split = self.pool.split(name)
        if split is None:
            served = ", ".join(self.pool.models()) or "none yet"
            return error(404, f"no model {name!r} is served here; served models: {served}")
        return split

    # -- inference -------------------------------------------------------------------

    async def predict_v1(self, request: Request) -> Response:
        return await self._infer(request, Protocol.V1)

    async def infer_v2(self, request: Request) -> Response:
        return await self._infer(request, Protocol.V2)

    async def _infer(self, request: Request, protocol: Protocol) -> Response:
        started = time.perf_counter()
        response = await self._answer(request, protocol)
        model = request.path_params["name"]
        # Only a model served here becomes a label: the name in a path is the caller's.
        if self.pool.split(model) is not None:
            # Empty when no version was chosen (refused, or none could serve).
            version = response.headers.get(VERSION_HEADER, "")
            variant = response.headers.get(VARIANT_HEADER, "")
            self.metrics.inference_requests.labels(
                model, version, variant, str(response.status_code)
            ).inc()
            self.metrics.inference_request_seconds.labels(model, version, variant).observe(
                time.perf_counter() - started
            )
        return response

    async def _answer(self, request: Request, protocol: Protocol) -> Response:
        split = self.authorized_split(request, Action.PREDICT)
        if isinstance(split, JSONResponse):
            return split
        inference_id = request.headers.get(INFERENCE_ID_HEADER) or uuid.uuid4().hex
        if len(inference_id) > MAX_INFERENCE_ID:
            return error(
                400,
                f"{INFERENCE_ID_HEADER}: expected at most {MAX_INFERENCE_ID} characters, "
                f"got {len(inference_id)}",
            )
        body = await self._body(request)
        if isinstance(body, JSONResponse):
            return body
        chosen = await self._choose(
            split, request.headers.get(PIN_HEADER), request.headers.get(STICKY_HEADER)
        )
        if isinstance(chosen, JSONResponse):
            return chosen
        backend, variant = chosen
        name = split.model
        path = (
            f"/v1/models/{name}:predict" if protocol is Protocol.V1 else f"/v2/models/{name}/infer"
        )
        headers = {
            name: value
            for name in FORWARDED_HEADERS
            if (value := request.headers.get(name)) is not None
        }
        started = time.perf_counter()
        try:
            upstream = await self.upstream.post(f"{backend.url}{path}", body, headers)
        except UpstreamError as exc:
            self.log.error(
                "upstream.unreachable", model=name, version=backend.version, error=str(exc)
            )
            self.serving_metrics.observe(
                name, backend.version, str(variant), 502, (time.perf_counter() - started) * 1e3
            )
            failed = error(502, f"{name} version {backend.version} did not answer ({exc})")
            failed.headers.update(
                {VERSION_HEADER: str(backend.version), VARIANT_HEADER: str(variant)}
            )
            return failed
        finally:
            self.pool.release(backend)
        self.serving_metrics.observe(
            name,
            backend.version,
            str(variant),
            upstream.status,
            (time.perf_counter() - started) * 1e3,
        )
        response = Response(
            upstream.content,
            status_code=upstream.status,
            media_type=upstream.content_type,
            headers={
                VERSION_HEADER: str(backend.version),
                VARIANT_HEADER: str(variant),
                INFERENCE_ID_HEADER: inference_id,
                # A binary V2 answer cannot be read without where its JSON ends.
                **(
                    {}
                    if upstream.binary_header_length is None
                    else {BINARY_HEADER: str(upstream.binary_header_length)}
                ),
            },
        )
        declared = headers.get(BINARY_HEADER, "")
        request_header_length = int(declared) if declared.isdigit() else None
        if upstream.status == 200:
            self.payloads.submit(
                Prediction(
                    name,
                    backend.version,
                    str(variant),
                    protocol,
                    body,
                    upstream.content,
                    inference_id,
                    request_header_length,
                    upstream.binary_header_length,
                )
            )
        if split.shadow_version is not None:
            mirrored = Prediction(
                name,
                split.shadow_version,
                str(Variant.SHADOW),
                protocol,
                body,
                b"",
                inference_id,
                request_header_length,
            )
            task = asyncio.create_task(self._mirror(mirrored, path, headers))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)
        return response

    async def _body(self, request: Request) -> bytes | JSONResponse:
        """The request body, or a 413 saying the limit once it is exceeded (never read whole)."""
        limit = self.ctx.settings.serving_max_body_bytes
        declared = request.headers.get("content-length", "")

        def too_large() -> JSONResponse:
            got = f"{declared} bytes" if declared.isdigit() else "more"
            return error(
                413,
                f"expected a request body of at most {limit} bytes "
                f"(FALAJ_SERVING_MAX_BODY_BYTES), got {got}; send smaller batches",
            )

        if declared.isdigit() and int(declared) > limit:
            return too_large()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    async def _mirror(self, mirrored: Prediction, path: str, headers: dict[str, str]) -> None:
        """Send a copy to the shadow version after the caller's answer is on its way.

        Its answer is logged as the ``shadow`` variant and goes nowhere else; a
        shadow that is not ready or fails costs a log line, never a caller.
        """
        backend = await self._acquire(mirrored.model, mirrored.version)
        if backend is None:
            return
        try:
            answer = await self.upstream.post(f"{backend.url}{path}", mirrored.request, headers)
        except UpstreamError as exc:
            self.log.warning(
                "shadow.unreachable", model=mirrored.model, version=mirrored.version, error=str(exc)
            )
            return
        finally:
            self.pool.release(backend)
        if answer.status == 200:
            self.payloads.submit(
                dataclasses.replace(
                    mirrored,
                    response=answer.content,
                    response_header_length=answer.binary_header_length,
                )
            )

    async def _choose(
        self, split: TrafficSplit, pin: str | None, sticky_key: str | None = None
    ) -> tuple[Backend, Variant] | JSONResponse:
        """A ready backend for the request, counted in flight (the caller releases it)."""
        if pin is not None:
            if not pin.isdigit() or int(pin) not in split.versions:
                return error(
                    400,
                    f"{PIN_HEADER}: expected one of the served versions "
                    f"{list(split.versions)} of {split.model!r}, got {pin!r}",
                )
            preferred = [variant_of(split, int(pin))]
        elif sticky_key:
            # One variant only: a key that moved would count in both groups.
            preferred = [pick_variant(split, sticky_draw(split, sticky_key))]
        else:
            first = pick_variant(split, self.rng.random() * 100.0)
            preferred = [first, *(v for v in (Variant.STABLE, Variant.CANARY) if v is not first)]
        for variant in preferred:
            if variant is Variant.CANARY and split.canary_version is None:
                continue
            backend = await self._acquire(split.model, version_of(split, variant))
            if backend is not None:
                return backend, variant
        return error(
            503,
            f"no version of {split.model!r} can serve now",
            versions=self._status(split),
        )

    async def _acquire(self, model: str, version: int) -> Backend | None:
        """The version's ready backend; one scaled to zero is started and waited for first."""
        backend = self.pool.acquire(model, version)
        if backend is not None:
            return backend
        key = (model, version)
        activation = self._activations.get(key)
        if activation is None:
            current = self.pool.backend(model, version)
            if current is None or current.state is not BackendState.SCALED_TO_ZERO:
                return None
            activation = asyncio.create_task(self._activate(model, version))
            self._activations[key] = activation
            activation.add_done_callback(lambda _: self._activations.pop(key, None))
        # Shielded: a caller that gives up must not cancel the others' activation.
        await asyncio.shield(activation)
        return self.pool.acquire(model, version)

    async def _activate(self, model: str, version: int) -> None:
        started = time.perf_counter()
        backend = await asyncio.to_thread(self.pool.activate, model, version)
        if backend is None:
            return
        timeout_s = self.ctx.settings.serving_activation_timeout_s
        settled = await asyncio.to_thread(backend.settled.wait, timeout_s)
        ready = backend.state is BackendState.READY
        self.log.info(
            "backend.activated" if ready else "backend.activation.failed",
            model=model,
            version=version,
            state=str(backend.state),
            settled=settled,
            seconds=round(time.perf_counter() - started, 3),
        )

    # -- automatic promotion and rollback ------------------------------------------------

    async def guard_canaries(self) -> None:
        """Judge every canary against its stable version, every ``GUARD_INTERVAL_S``."""
        while True:
            await asyncio.sleep(GUARD_INTERVAL_S)
            for model in self.pool.models():
                split = self.pool.split(model)
                evidence = None if split is None else self.serving_metrics.evidence(split)
                if split is None or evidence is None:
                    continue
                verdict = self.canary_policy.verdict(*evidence)
                if verdict.action is None:
                    continue
                try:
                    await asyncio.to_thread(self.conclude, split, verdict)
                except Exception as exc:  # the guard must outlive one failed step
                    self.log.error(
                        "canary.conclude.failed",
                        model=model,
                        action=str(verdict.action),
                        error=f"{type(exc).__name__}: {exc}",
                    )

    def conclude(self, split: TrafficSplit, verdict: CanaryVerdict) -> None:
        """Promote or roll back ``split``'s canary (audited), and announce it."""
        assert verdict.action in (RolloutAction.PROMOTE, RolloutAction.ROLLBACK)
        step = RolloutStep(
            model=split.model,
            action=verdict.action,
            version=split.canary_version,
            reason=f"automatic: {verdict.reason}",
            requested_by=SOURCE,
        )
        result = self.rollouts.apply(step, actor=self.ctx.actor)
        if not result.changed:
            return  # another router replica was first
        self.log.warning(
            "canary.promoted" if verdict.action is RolloutAction.PROMOTE else "canary.rolled-back",
            model=split.model,
            version=split.canary_version,
            reason=verdict.reason,
        )
        self.metrics.canary_verdicts.labels(split.model, str(verdict.action)).inc()
        try:
            self.publisher.publish(
                announcement(result, region=self.ctx.settings.region, source=SOURCE)
            )
        except FalajError as exc:
            # The step stands (stored and audited); only the announcement is lost.
            self.log.error("canary.announce.failed", model=split.model, error=str(exc))

    # -- outcome feedback --------------------------------------------------------------

    async def outcomes(self, request: Request) -> Response:
        """Outcomes of earlier predictions, credited to the variants that made them."""
        split = self.authorized_split(request, Action.PREDICT)
        if isinstance(split, JSONResponse):
            return split
        body = await self._body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            outcomes = parse_outcomes(
                request.headers, body, model=split.model, policy=self.ctx.policy
            )
        except InvalidPayload as exc:
            return error(400, str(exc))
        matched = sum(self.serving_metrics.observe_outcome(o) for o in outcomes)
        return JSONResponse(
            {"received": len(outcomes), "matched": matched, "unmatched": len(outcomes) - matched}
        )

    # -- metadata and health ---------------------------------------------------------

    def _status(self, split: TrafficSplit) -> dict[str, dict[str, object]]:
        return {str(v): self._backend_status(split.model, v) for v in split.versions}

    def _shadow_status(self, split: TrafficSplit) -> dict[str, object] | None:
        if split.shadow_version is None:
            return None
        return {
            "version": split.shadow_version,
            **self._backend_status(split.model, split.shadow_version),
        }

    def _backend_status(self, model: str, version: int) -> dict[str, object]:
        # A version scaled to zero still serves: its next request starts it.
        backend = self.pool.backend(model, version)
        return backend.status() if backend else {"state": "absent"}

    def _ready(self, split: TrafficSplit) -> bool:
        serving = (BackendState.READY, BackendState.SCALED_TO_ZERO)
        return all(s["state"] in serving for s in self._status(split).values())

    async def ab_report(self, request: Request) -> Response:
        """Per-variant requests, errors and latency, and the canary against the stable one."""
        split = self.authorized_split(request, Action.READ)
        if isinstance(split, JSONResponse):
            return split
        return JSONResponse({"model": split.model, **self.serving_metrics.report(split)})

    async def model_metadata(self, request: Request) -> Response:
        split = self.authorized_split(request, Action.READ)
        if isinstance(split, JSONResponse):
            return split
        try:
            width = len(self.features(split.model, split.stable_version))
        except FalajError as exc:
            return error(int(exc.status), str(exc))
        return JSONResponse(
            {
                "name": split.model,
                "versions": [str(v) for v in split.versions],
                "platform": "onnxruntime_onnx",
                "inputs": [{"name": INPUT_NAME, "datatype": DATATYPE, "shape": [-1, width]}],
                "outputs": [{"name": OUTPUT_NAME, "datatype": DATATYPE, "shape": [-1, 1]}],
                "traffic": {**split.traffic(), "updated": split.updated},
                "status": self._status(split),
                "shadow": self._shadow_status(split),
            }
        )

    async def model_ready(self, request: Request) -> Response:
        split = self.authorized_split(request, Action.READ)
        if isinstance(split, JSONResponse):
            return split
        ready = self._ready(split)
        return JSONResponse(
            {"name": split.model, "ready": ready, "versions": self._status(split)},
            status_code=200 if ready else 503,
        )

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        waiting = self.pool.not_ready()
        if waiting:
            return JSONResponse({"ready": False, "not_ready": waiting}, status_code=503)
        return JSONResponse({"ready": True})

    async def scrape(self, request: Request) -> Response:
        # Prometheus scrapes with a bearer token (its bearer_token_file) like any caller.
        denied = self.authorize(request, Action.READ)
        if denied is not None:
            return denied
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE)


def create_app(router: Router) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await router.upstream.start()
        router.payloads.start()
        router.pool.start()
        guard = (
            asyncio.create_task(router.guard_canaries())
            if router.ctx.settings.rollback_auto
            else None
        )
        # What startup built lives as long as the process: out of the
        # collector's reach, a full collection no longer walks it (one stalled
        # requests for ~110 ms, the whole p99 at 200 requests/s).
        gc.freeze()
        try:
            yield
        finally:
            if guard is not None:
                guard.cancel()
            router.pool.stop()
            router.payloads.stop()
            await router.upstream.close()

    Handler = Callable[[Request], Awaitable[Response]]
    routes: list[tuple[str, Handler, list[str]]] = [
        ("/v1/models/{name}:predict", router.predict_v1, ["POST"]),
        ("/v1/models/{name}", router.model_ready, ["GET"]),
        ("/v2/models/{name}/infer", router.infer_v2, ["POST"]),
        ("/v2/models/{name}/ready", router.model_ready, ["GET"]),
        ("/v2/models/{name}", router.model_metadata, ["GET"]),
        ("/v2/models/{name}/ab", router.ab_report, ["GET"]),
        ("/v2/models/{name}/outcomes", router.outcomes, ["POST"]),
        ("/v2/health/live", router.live, ["GET"]),
        ("/v2/health/ready", router.ready, ["GET"]),
        ("/metrics", router.scrape, ["GET"]),
    ]
    return Starlette(
        routes=[Route(path, endpoint, methods=methods) for path, endpoint, methods in routes],
        lifespan=lifespan,
    )


def build_router(ctx: Context, base_env: dict[str, str], metrics: Metrics | None = None) -> Router:
    """Everything one router process holds, from its context and base environment."""
    settings = ctx.settings
    store = DeploymentStore(ctx)
    pool = BackendPool(
        PoolConfig(
            host=settings.host,
            env={**base_env, **settings.to_env()},
            log_dir=ctx.paths.logs,
            cwd=PROJECT_ROOT,
            idle_s=settings.serving_idle_s,
            prewarm=settings.serving_prewarm,
            scheme=settings.scheme,
            verify=client_verify(settings),
            token=settings.bearer_token(),
        ),
        store,
    )
    registry = ModelRegistry(ctx)
    serving = ServingMetrics()
    payloads = PayloadLogger(
        EventPublisher.from_context(ctx, timeout_s=5.0),
        region=settings.region,
        features=lambda model, version: registry.get(model, version).feature_names,
        on_logged=serving.observe_predictions,
    )
    exported = metrics if metrics is not None else Metrics()
    exported.read_payload_log(lambda: dataclasses.asdict(payloads.stats))
    return Router(
        ctx=ctx,
        pool=pool,
        payloads=payloads,
        registry=registry,
        rng=random.Random(),
        upstream=Upstream(timeout_s=30.0, verify=client_verify(settings)),
        serving_metrics=serving,
        rollouts=Rollouts(ctx, store, registry),
        # Its own publisher: the payload log's belongs to the payload thread.
        publisher=EventPublisher.from_context(ctx, timeout_s=5.0),
        metrics=exported,
    )


def main() -> None:
    settings = Settings.from_env(os.environ)
    configure_logging("router", settings.log_level)
    # httpx logs every request at info: one line per proxied prediction and
    # per logged payload would drown the router's own log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ctx = Context.create(settings, actor="router")
    # The predictors inherit the platform's environment (PATH, the venv), but
    # their FALAJ_* settings come from ours alone.
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("FALAJ_")}
    app = create_app(build_router(ctx, base_env, Metrics.for_process()))
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.router_port,
        log_level=settings.log_level,
        access_log=False,
        # Longer than a load balancer's idle timeout, as KServe does.
        timeout_keep_alive=65,
        **uvicorn_options(settings),
    )


if __name__ == "__main__":
    main()
