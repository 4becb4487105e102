"""Serving latency: the Falaj router against KServe alone and onnxruntime alone.

One signed, encrypted model version is registered; the same V2 request is sent
sequentially (batch 1) three ways, in one run:

- ``onnxruntime``: ``session.run`` in-process (the floor);
- ``kserve``: KServe V2 REST straight to the predictor process (the peer);
- ``falaj router``: through the router (bearer auth, traffic split, payload
  logging to a real broker) to the same kind of predictor process.

The ratio router / KServe is the price of auth, the split and logging.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import torch

from benchmarks.common import Row, percentile
from falaj.auth import Role, write_token_file
from falaj.context import Context
from falaj.deployments import DeploymentStore, TrafficSplit, now_iso
from falaj.profile import ReferenceProfile
from falaj.registry import ModelRegistry
from falaj.runtime.processes import ManagedProcess, ReadyCheck, broker_argv, free_port
from falaj.settings import PROJECT_ROOT, Settings
from falaj.topology import BrokerSpec
from falaj.topology_files import dump_endpoints, dump_topology

FEATURES = ("amount", "hour", "distance_km", "card_age_days", "tx_count_24h", "is_foreign")


def _mlp_onnx(path: Path) -> bytes:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(len(FEATURES), 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 1),
        torch.nn.Sigmoid(),
    )
    torch.onnx.export(
        model,
        (torch.zeros(1, len(FEATURES)),),
        str(path),
        input_names=["input"],
        output_names=["probability"],
        dynamic_axes={"input": {0: "n"}, "probability": {0: "n"}},
        dynamo=False,
        opset_version=17,
    )
    return path.read_bytes()


def _time(call: object, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def run(quick: bool) -> list[Row]:
    n = 200 if quick else 2000
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / ".falaj"
        ports = {"broker": free_port(), "router": free_port()}
        settings = Settings(home=home, broker_port=ports["broker"], router_port=ports["router"])
        ctx = Context.create(settings, actor="benchmark")
        token = ctx.tokens.issue("benchmark", Role.SERVICE)
        write_token_file(ctx.paths.keys / "service.token", token)
        onnx_bytes = _mlp_onnx(Path(tmp) / "mlp.onnx")
        rows = np.random.default_rng(0).random((500, len(FEATURES))).astype(np.float32)
        registry = ModelRegistry(ctx)
        version = registry.register(
            "fraud",
            onnx_bytes=onnx_bytes,
            metrics={"auc": 0.5},
            lineage={"source": "benchmark"},
            feature_names=FEATURES,
            profile=ReferenceProfile.from_columns({f: rows[:, j] for j, f in enumerate(FEATURES)}),
        ).version
        DeploymentStore(ctx).set(
            TrafficSplit(model="fraud", stable_version=version, canary_percent=0, updated=now_iso())
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("FALAJ_")}
        env.update(
            settings.model_copy(update={"token_file": ctx.paths.keys / "service.token"}).to_env()
        )
        dump_topology([BrokerSpec(name="default")], [], ctx.paths.run / "topology.json")
        dump_endpoints({}, ctx.paths.run / "endpoints.json")
        kserve_port = free_port()
        processes = [
            ManagedProcess(
                name="broker",
                env=env,
                log_path=ctx.paths.logs / "broker.log",
                cwd=PROJECT_ROOT,
                argv=broker_argv(ctx.paths.run / "topology.json", ctx.paths.run / "endpoints.json"),
            ),
            ManagedProcess(
                name="kserve",
                env=env,
                log_path=ctx.paths.logs / "kserve.log",
                cwd=PROJECT_ROOT,
                argv=[
                    sys.executable,
                    "-m",
                    "inference.server",
                    "--model",
                    "fraud",
                    "--version",
                    str(version),
                    "--http-port",
                    str(kserve_port),
                    "--grpc-port",
                    str(free_port()),
                ],
            ),
            ManagedProcess(
                name="router",
                env=env,
                log_path=ctx.paths.logs / "router.log",
                cwd=PROJECT_ROOT,
                argv=[sys.executable, "-m", "inference.router"],
            ),
        ]
        try:
            for process in processes:
                process.start()
            processes[0].wait_ready(ReadyCheck(settings.host, ports["broker"], "/healthz"))
            processes[1].wait_ready(ReadyCheck(settings.host, kserve_port, "/v2/health/ready"))
            processes[2].wait_ready(ReadyCheck(settings.host, ports["router"], "/v2/health/ready"))
            return _measure(onnx_bytes, rows, n, kserve_port, ports["router"], token)
        finally:
            for process in reversed(processes):
                process.stop()


def _measure(
    onnx_bytes: bytes, rows: np.ndarray, n: int, kserve_port: int, router_port: int, token: str
) -> list[Row]:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    one = rows[:1]
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": [1, len(FEATURES)],
                "datatype": "FP32",
                "data": one.ravel().tolist(),
            }
        ]
    }
    with (
        httpx.Client(timeout=10.0) as direct,
        httpx.Client(timeout=10.0, headers={"Authorization": f"Bearer {token}"}) as routed,
    ):
        kserve_url = f"http://127.0.0.1:{kserve_port}/v2/models/fraud/infer"
        router_url = f"http://127.0.0.1:{router_port}/v2/models/fraud/infer"
        for url, client in ((kserve_url, direct), (router_url, routed)):  # warm up
            for _ in range(20):
                client.post(url, json=body).raise_for_status()
        raw = _time(lambda: session.run(None, {"input": one}), n)
        kserve = _time(lambda: direct.post(kserve_url, json=body).raise_for_status(), n)
        router = _time(lambda: routed.post(router_url, json=body).raise_for_status(), n)
    rows_out = []
    for q in (50, 99):
        rows_out += [
            Row(metric=f"onnxruntime session.run p{q}", value=percentile(raw, q), unit="ms"),
            Row(
                metric=f"KServe V2 REST direct p{q}",
                value=percentile(kserve, q),
                unit="ms",
                peer="onnxruntime session.run",
                peer_value=percentile(raw, q),
            ),
            Row(
                metric=f"Falaj router V2 REST p{q}",
                value=percentile(router, q),
                unit="ms",
                peer="KServe V2 REST direct",
                peer_value=percentile(kserve, q),
            ),
        ]
    rows_out.append(Row(metric="requests per path", value=n, unit="requests"))
    return rows_out
