"""Serving: the Falaj router against KServe alone, BentoML and onnxruntime, one ONNX model.

One platform (broker, router, and the predictor the router starts for the
split) serves one signed, encrypted version of the fraud model (the product's
MLP: standardisation, 6 -> 32 -> 16 -> 1, exported by ``training.export``);
every number below comes from that one run:

- ``rest_p50_ms``: V2 REST, batch 1, through the router (bearer auth, the
  split, payload logging to the real broker), sequential. Peer: the same
  request straight to the same predictor process (KServe alone). Router,
  direct REST and direct gRPC take turns request by request, so drift hits
  all three alike.
- ``router_overhead_p50_ms``: that p50 through the router minus the p50 direct.
- ``grpc_p50_ms``: V2 gRPC, batch 1, straight to the predictor's gRPC port
  (kserve's own generated stubs on grpcio's sync channel, one pre-built
  request). Peer: V2 REST direct. grpcio's client is the heavier of the two
  here: measured at ~350 us of client CPU a call against ~70 us for the raw
  REST socket, which is most of the gap between the two p50s.
- ``rest_p99_ms_at_200rps``: open loop at a fixed 200 requests/s through the
  router; latency runs from each request's *scheduled* send time (no
  coordinated omission: a stall counts against every request queued behind it).
  A stall of ~100 ms (a full garbage collection in the router, measured) holds
  up ~20 requests: in quick mode's 1,000 that is past the p99, in full mode's
  6,000 it is not, so the two modes' p99s differ by that; ``rest_max_ms_at_...``
  shows the stall either way.
- ``rest_max_rps``: closed loop over ``CONCURRENCY`` (8) keep-alive connections,
  batch 1, through the router. Peer: BentoML 1.4.39 serving the same ONNX
  bytes on onnxruntime (``serving_tools/bentoml_service.py``, in
  ``.venv-bentoml``) with the same client, connections, request count and
  warm-up, on this machine; one BentoML worker process, as the predictor runs
  one uvicorn worker; the same onnxruntime session options; BentoML on
  httptools and uvloop, as our router, and its API ``async def`` (its faster
  form here, see that file). Ours takes two hops (router, predictor: two
  processes, so it can use both cores) and also sends every prediction to the
  broker; BentoML answers in one process. In full mode each server runs
  ``repeats`` times, taking turns, and the median run counts. 8 connections:
  the router peaked at 4 to 8 and lost throughput at 16, BentoML was flat
  from 1 to 16.
- ``batch256_rows_per_s``: rows/s of V2 REST requests of 256 rows through the
  router, closed loop as above, JSON tensors. ``..._binary`` is the same with
  KServe's binary tensor extension (``inference-header-content-length``),
  which the router forwards and its payload log reads back
  (``inference/binary_tensors.py``). Peer: ``session.run`` in this process on
  the same 256 rows, with the predictor's session options.
- ``cold_start_s_100mb``: scale from zero as the product does it, for a
  registered ~100 MB model (25M float parameters; signed and encrypted by the
  registry): the router's pool keeps one pre-warmed ``inference.server
  --standby`` (imports done, no model); the clock runs from handing it the
  model to its first 200 answer, verification, decryption and the session
  included (``prewarmed_cold_start``; the answer is polled every 5 ms).
  ``cold_start_s_100mb_fresh_process`` is the same from starting a fresh
  ``python -m inference.server`` (no standby: the imports count too). The
  breakdown (``cold_start_*_s``) comes from as many fresh starts again, taking
  turns with those, of the same module under ``_MARKED``, which timestamps the
  registry's verify + decrypt and the session's creation in the process
  itself: interpreter and imports (up to verify), verify + decrypt, session
  create, and the rest (KServe's server start, the first answer);
  ``cold_start_s_100mb_marked`` is those starts' total.

Extra rows explain the headline ones: p99s, KServe-direct throughput, CPU ms
per request of each process (from ``/proc``), the client's own CPU, and
``other_processes_cpu_cores``: what everything else on the machine used
meanwhile (a run is flagged when it is above 0.2 cores).

Load comes from ``serving_tools/loadgen.py`` in its own process: a raw
HTTP/1.1 client on uvloop and httptools sending one pre-built request. This
machine has 2 cores shared by the client and the servers, so every CPU second
the client spends is one the servers do not get: the client takes about
70-100 us of CPU per request, 0.03-0.08 cores at max throughput (reported as
``client_cpu_cores_at_max_rps``). It is the same client for both peers, so it
lowers both a little; it costs more where the server is faster (it sends more
requests), which flatters the slower side by a few percent at most. Under
open-loop load the client's sends can also wait for a core:
``client_send_lateness_p99_ms_at_200rps`` is that share of the p99.
Sequential latencies are taken in this process with a blocking socket and the
same pre-built requests (tens of us of client time).

Goals travel with the rows as ``goal`` (e.g. ``"<= 5 ms"``); ``run`` prints
whether each was met.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from benchmarks.common import Row, percentile
from falaj.auth import Role, write_token_file
from falaj.context import Context
from falaj.deployments import DeploymentStore, TrafficSplit, now_iso
from falaj.model_spec import MLP_HIDDEN
from falaj.profile import ReferenceProfile
from falaj.registry import ModelRegistry
from falaj.runtime.processes import ManagedProcess, ReadyCheck, broker_argv, free_port
from falaj.settings import PROJECT_ROOT, Settings
from falaj.topology import BrokerSpec
from falaj.topology_files import dump_endpoints, dump_topology
from inference.server import STANDBY, STANDBY_READY, server_args, server_argv
from inference.session import create_session

FEATURES = ("amount", "hour", "distance_km", "card_age_days", "tx_count_24h", "is_foreign")
MODEL = "fraud"
#: The ~100 MB model of the cold start.
WIDE = "wide"
#: Hidden width of the wide model: 6*H + H + H + 1 float32 parameters (~25M, ~100 MB).
WIDE_HIDDEN = 3_125_000
HOST = "127.0.0.1"
#: Requests/s of the open-loop run.
RATE = 200
#: Keep-alive connections of the closed-loop runs (ours and BentoML's alike).
CONCURRENCY = 8
BATCH = 256
TOOLS = Path(__file__).resolve().parent / "serving_tools"
LOADGEN = TOOLS / "loadgen.py"
BENTOML = PROJECT_ROOT / ".venv-bentoml" / "bin" / "bentoml"


@dataclass(frozen=True)
class Sizes:
    #: Rounds of (router REST, direct REST, direct gRPC), batch 1.
    sequential: int
    #: Measured seconds of the 200 requests/s run.
    open_s: float
    #: Measured seconds of each closed-loop run.
    closed_s: float
    #: Seconds sent before any load run is measured.
    warmup_s: float
    #: Closed-loop runs per server, taking turns (the median run is reported).
    repeats: int
    #: Seconds of in-process ``session.run``.
    inprocess_s: float
    #: Cold starts of the 100 MB model (the median is reported).
    cold_starts: int


QUICK = Sizes(
    sequential=400, open_s=5, closed_s=2.5, warmup_s=1, repeats=1, inprocess_s=1, cold_starts=1
)
FULL = Sizes(
    sequential=4000, open_s=30, closed_s=10, warmup_s=2, repeats=3, inprocess_s=5, cold_starts=3
)


# -- the model -------------------------------------------------------------------------


def fraud_onnx(rows: np.ndarray) -> bytes:
    """The product's network (untrained weights: the same work per request), checked export."""
    import torch

    from training.export import export_checked
    from training.model import NetworkSpec, ProbabilityModel, Standardisation, TabularMLP

    torch.manual_seed(0)
    spec = NetworkSpec(features=len(FEATURES), hidden=MLP_HIDDEN)
    network = TabularMLP(spec, Standardisation.fit(rows))
    return export_checked(ProbabilityModel(network), rows).onnx_bytes


def wide_onnx(hidden: int = WIDE_HIDDEN) -> bytes:
    """input [N, 6] -> Linear(6, hidden) -> ReLU -> Linear(hidden, 1) -> Sigmoid -> probability."""
    rng = np.random.default_rng(1)
    width = len(FEATURES)
    scale = np.float32(1 / np.sqrt(hidden))
    weights = [
        numpy_helper.from_array(rng.standard_normal((width, hidden), np.float32), "w1"),
        numpy_helper.from_array(np.zeros(hidden, np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((hidden, 1), np.float32) * scale, "w2"),
        numpy_helper.from_array(np.zeros(1, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["o"]),
        helper.make_node("Add", ["o", "b2"], ["ob"]),
        helper.make_node("Sigmoid", ["ob"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["n", 1])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


# -- requests ----------------------------------------------------------------------------


def v2_json(matrix: np.ndarray) -> bytes:
    tensor = {
        "name": "input",
        "shape": list(matrix.shape),
        "datatype": "FP32",
        "data": [float(v) for v in matrix.ravel()],
    }
    return json.dumps({"inputs": [tensor]}, separators=(",", ":")).encode()


def v2_binary(matrix: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """KServe's binary tensor extension: a JSON header, then the raw little-endian floats."""
    raw = np.ascontiguousarray(matrix, dtype="<f4").tobytes()
    tensor = {
        "name": "input",
        "shape": list(matrix.shape),
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(raw)},
    }
    header = json.dumps({"inputs": [tensor]}, separators=(",", ":")).encode()
    return header + raw, {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def http_request(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """One whole HTTP/1.1 keep-alive POST, sent as is by the clients below."""
    fields = {"host": HOST, "content-type": "application/json", **(headers or {})}
    fields["content-length"] = str(len(body))
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + body


class HttpConnection:
    """A blocking keep-alive connection that sends pre-built requests (few us of client work)."""

    def __init__(self, port: int, timeout_s: float = 10.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def call(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self._recv()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            self._recv()
            rest = self.buffer.partition(b"\r\n\r\n")[2]
        self.buffer = rest[length:]
        return status, rest[:length]

    def _recv(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def probabilities(body: bytes) -> list[float]:
    answer = json.loads(body)
    if "outputs" in answer:
        (output,) = [o for o in answer["outputs"] if o["name"] == "probability"]
        return [float(v) for v in output["data"]]
    return [float(v) for v in np.asarray(answer, dtype=np.float64).ravel()]


# -- processes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Predictor:
    pid: int
    http_port: int
    grpc_port: int


@dataclass
class Platform:
    ctx: Context
    env: dict[str, str]
    token: str
    router_port: int
    router_pid: int
    broker_pid: int
    predictor: Predictor
    onnx_bytes: bytes
    rows: np.ndarray
    wide_version: int
    tmp: Path


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU seconds of these processes (all their threads), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def busy_seconds() -> float:
    """CPU seconds every process on this machine has spent, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_seconds(pids: list[int]) -> float:
    """CPU seconds of this process, its finished children, and the live ``pids``."""
    times = os.times()
    return (
        times.user
        + times.system
        + times.children_user
        + times.children_system
        + (cpu_seconds(pids))
    )


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


def predictor_of(router_port: int, token: str) -> Predictor:
    """The predictor process the router started for the split, and its ports."""
    answer = httpx.get(
        f"http://{HOST}:{router_port}/v2/models/{MODEL}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=5.0,
    )
    answer.raise_for_status()
    status = answer.json()["status"]["1"]
    return Predictor(
        pid=int(status["pid"]),
        http_port=int(status["http_port"]),
        grpc_port=int(status["grpc_port"]),
    )


def start_predictor(
    platform: Platform,
    model: str,
    version: int,
    http_port: int,
    log: Path,
    *,
    marks: Path | None = None,
) -> ManagedProcess:
    """Start one predictor process: the step a scale-from-zero activator would take.

    With ``marks``, the same module runs under ``_MARKED`` (timestamps of its
    load steps, appended to that file) instead of ``python -m inference.server``.
    """
    env = platform.env
    program = ["-m", "inference.server"]
    if marks is not None:
        env = {**env, "BENCH_COLD_MARKS": str(marks)}
        program = ["-c", _MARKED]
    return ManagedProcess(
        name=f"predictor-{model}-{version}",
        env=env,
        log_path=log,
        cwd=PROJECT_ROOT,
        argv=[sys.executable, *program, *server_args(model, version, http_port, free_port())],
    ).start()


# ``python -m inference.server`` (runpy, as ``-m`` runs it) with two steps timed:
# the registry's verify + decrypt and the onnxruntime session. kserve parses
# sys.argv when imported, so the modules are imported first under a bare argv,
# as inference.server's own main does before its kserve import.
_MARKED = """
import json, os, runpy, sys, time
out = open(os.environ["BENCH_COLD_MARKS"], "a")
def timed(name, function):
    def wrapper(*args, **kwargs):
        started = time.time()
        try:
            return function(*args, **kwargs)
        finally:
            out.write(json.dumps([name, started, time.time()]) + "\\n")
            out.flush()
    return wrapper
argv, sys.argv = sys.argv, sys.argv[:1]
import falaj.registry, inference.predictor
registry = falaj.registry.ModelRegistry
registry.load_verified = timed("verify_decrypt", registry.load_verified)
inference.predictor.create_session = timed("session_create", inference.predictor.create_session)
sys.argv = argv
runpy.run_module("inference.server", run_name="__main__", alter_sys=True)
"""


@contextmanager
def platform(tmp: Path) -> Iterator[Platform]:
    home = tmp / ".falaj"
    ports = {"broker": free_port(), "router": free_port()}
    settings = Settings(home=home, broker_port=ports["broker"], router_port=ports["router"])
    ctx = Context.create(settings, actor="benchmark")
    token = ctx.tokens.issue("benchmark", Role.SERVICE)
    write_token_file(ctx.paths.keys / "service.token", token)
    rows = np.random.default_rng(0).random((1000, len(FEATURES))).astype(np.float32)
    profile = ReferenceProfile.from_columns({f: rows[:, j] for j, f in enumerate(FEATURES)})
    onnx_bytes = fraud_onnx(rows)
    registry = ModelRegistry(ctx)
    common: dict[str, Any] = {
        "metrics": {"auc": 0.5},
        "lineage": {"source": "benchmark"},
        "feature_names": FEATURES,
        "profile": profile,
    }
    version = registry.register(MODEL, onnx_bytes=onnx_bytes, **common).version
    wide_version = registry.register(WIDE, onnx_bytes=wide_onnx(), **common).version
    DeploymentStore(ctx).set(
        TrafficSplit(model=MODEL, stable_version=version, canary_percent=0, updated=now_iso())
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FALAJ_")}
    env.update(
        settings.model_copy(update={"token_file": ctx.paths.keys / "service.token"}).to_env()
    )
    dump_topology([BrokerSpec(name="default")], [], ctx.paths.run / "topology.json")
    dump_endpoints({}, ctx.paths.run / "endpoints.json")
    broker = ManagedProcess(
        name="broker",
        env=env,
        log_path=ctx.paths.logs / "broker.log",
        cwd=PROJECT_ROOT,
        argv=broker_argv(ctx.paths.run / "topology.json", ctx.paths.run / "endpoints.json"),
    )
    router = ManagedProcess(
        name="router",
        env=env,
        log_path=ctx.paths.logs / "router.log",
        cwd=PROJECT_ROOT,
        argv=[sys.executable, "-m", "inference.router"],
    )
    try:
        broker.start()
        router.start()
        broker.wait_ready(ReadyCheck(settings.host, ports["broker"], "/healthz"))
        router.wait_ready(ReadyCheck(settings.host, ports["router"], "/v2/health/ready"))
        assert broker.pid is not None and router.pid is not None
        yield Platform(
            ctx=ctx,
            env=env,
            token=token,
            router_port=ports["router"],
            router_pid=router.pid,
            broker_pid=broker.pid,
            predictor=predictor_of(ports["router"], token),
            onnx_bytes=onnx_bytes,
            rows=rows,
            wide_version=wide_version,
            tmp=tmp,
        )
    finally:
        router.stop()  # stops the predictors it started
        broker.stop()


@contextmanager
def bentoml_peer(platform: Platform) -> Iterator[tuple[int, list[int]] | None]:
    """BentoML serving the same ONNX bytes: (its port, its processes), or None when not set up."""
    if not BENTOML.exists():
        print(f"serving: {BENTOML} is missing (make bench creates it): no BentoML peer")
        yield None
        return
    model_path = platform.tmp / "fraud.onnx"
    model_path.write_bytes(platform.onnx_bytes)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FALAJ_", "BENTOML_"))}
    env.update(
        FALAJ_BENCH_ONNX=str(model_path),
        BENTOML_HOME=str(platform.tmp / "bentoml"),
        BENTOML_DO_NOT_TRACK="True",
    )
    process = ManagedProcess(
        name="bentoml",
        env=env,
        log_path=platform.tmp / "bentoml.log",
        cwd=TOOLS,
        grace_s=10.0,
        argv=[
            str(BENTOML),
            "serve",
            "bentoml_service:FraudOnnx",
            "--host",
            HOST,
            "--port",
            str(port),
        ],
    )
    try:
        process.start()
        process.wait_ready(ReadyCheck(HOST, port, "/readyz"), timeout_s=60.0)
        assert process.pid is not None
        yield port, descendants(process.pid)
    finally:
        process.stop()


# -- measurements ------------------------------------------------------------------------------


def loadgen(port: int, request: bytes, **spec: Any) -> dict[str, Any]:
    """Run ``serving_tools/loadgen.py`` in its own process; its JSON result."""
    spec = {"host": HOST, "port": port, "request_b64": base64.b64encode(request).decode(), **spec}
    done = subprocess.run(
        [sys.executable, str(LOADGEN)],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=float(spec["warmup_s"]) + float(spec["duration_s"]) + 120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    if result["errors"]:
        raise RuntimeError(f"loadgen: {result['errors']} requests failed on port {port}")
    return result


@dataclass(frozen=True)
class Throughput:
    rps: float
    p50_ms: float
    #: CPU ms per answered request, by process name.
    cpu_ms: dict[str, float]
    client_cpu_share: float


def closed_loop(
    port: int, request: bytes, sizes: Sizes, processes: dict[str, list[int]]
) -> Throughput:
    before = {name: cpu_seconds(pids) for name, pids in processes.items()}
    result = loadgen(
        port,
        request,
        mode="closed",
        concurrency=CONCURRENCY,
        warmup_s=sizes.warmup_s,
        duration_s=sizes.closed_s,
    )
    # CPU is read around the whole run, warm-up included: per answered request.
    answered = max(int(result["answered"]), 1)
    cpu = {
        name: (cpu_seconds(pids) - before[name]) * 1e3 / answered
        for name, pids in processes.items()
    }
    return Throughput(
        rps=result["rps"],
        p50_ms=percentile(result["latencies_ms"], 50),
        cpu_ms=cpu,
        client_cpu_share=result["client_cpu_s"] / result["window_s"],
    )


def sequential(
    calls: dict[str, Callable[[], object]], rounds: int, warmup: int = 100
) -> dict[str, list[float]]:
    """Latency ms of each call, taking turns (the order rotates every round)."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            started = time.perf_counter()
            calls[name]()
            samples[name].append((time.perf_counter() - started) * 1e3)
    return samples


def batch1_latency(p: Platform, sizes: Sizes) -> dict[str, list[float]]:
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    one = p.rows[:1]
    expected = create_session(p.onnx_bytes).run(None, {"input": one})[0].ravel()
    path = f"/v2/models/{MODEL}/infer"
    body = v2_json(one)
    # The predictor admits the caller's token itself, as the router does.
    auth = {"authorization": f"Bearer {p.token}"}
    routed_request = http_request(path, body, auth)
    to_predictor = http_request(path, body, auth)
    routed = HttpConnection(p.router_port)
    direct = HttpConnection(p.predictor.http_port)
    channel = grpc.insecure_channel(f"{HOST}:{p.predictor.grpc_port}")
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        grpc_request = pb.ModelInferRequest(
            model_name=MODEL,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="input",
                    datatype="FP32",
                    shape=list(one.shape),
                    contents=pb.InferTensorContents(fp32_contents=one.ravel().tolist()),
                )
            ],
        )
        metadata = list(auth.items())

        def infer(request: object, timeout: float) -> Any:
            return stub.ModelInfer(request, timeout=timeout, metadata=metadata)

        # Every path must answer the model's own probability before it is timed.
        for connection, request in ((routed, routed_request), (direct, to_predictor)):
            status, answer = connection.call(request)
            if status != 200:
                raise RuntimeError(f"V2 REST answered {status}: {answer[:300]!r}")
            np.testing.assert_allclose(probabilities(answer), expected, rtol=1e-5)
        reply = infer(grpc_request, timeout=10.0)
        got = (
            np.frombuffer(reply.raw_output_contents[0], "<f4")
            if reply.raw_output_contents
            else (np.asarray(reply.outputs[0].contents.fp32_contents))
        )
        np.testing.assert_allclose(got, expected, rtol=1e-5)

        def rest(connection: HttpConnection, request: bytes) -> Callable[[], object]:
            def call() -> object:
                status, answer = connection.call(request)
                if status != 200:
                    raise RuntimeError(f"V2 REST answered {status}: {answer[:300]!r}")
                return answer

            return call

        return sequential(
            {
                "router": rest(routed, routed_request),
                "direct": rest(direct, to_predictor),
                "grpc": lambda: infer(grpc_request, timeout=10.0),
            },
            sizes.sequential,
        )
    finally:
        routed.close()
        direct.close()
        channel.close()


def inprocess_rows_per_s(onnx_bytes: bytes, batch: np.ndarray, seconds: float) -> float:
    session = create_session(onnx_bytes)
    feed = {"input": np.ascontiguousarray(batch, dtype=np.float32)}
    for _ in range(50):
        session.run(["probability"], feed)
    runs, started = 0, time.perf_counter()
    while (took := time.perf_counter() - started) < seconds:
        for _ in range(100):
            session.run(["probability"], feed)
        runs += 100
    return runs * len(batch) / took


@dataclass(frozen=True)
class ColdStart:
    total_s: float
    #: Seconds per step of the same start (only where ``marks`` were asked for).
    steps: dict[str, float]


def cold_start(p: Platform, index: int, *, marked: bool = False) -> ColdStart:
    """Start a predictor for the ~100 MB model; seconds until its first 200 answer."""
    body = direct_request(p, WIDE, v2_json(p.rows[:1]))
    http_port = free_port()
    marks = p.tmp / f"wide-{index}.marks" if marked else None
    launched = time.time()
    process = start_predictor(
        p, WIDE, p.wide_version, http_port, p.tmp / f"wide-{index}.log", marks=marks
    )
    try:
        first_answer(process, http_port, body)
        answered = time.time()
    finally:
        process.stop()
    steps: dict[str, float] = {}
    if marks is not None:
        spans: dict[str, list[tuple[float, float]]] = {}
        for line in marks.read_text().splitlines():
            name, began, ended = json.loads(line)
            spans.setdefault(name, []).append((began, ended))
        if {"verify_decrypt", "session_create"} <= set(spans):
            steps["interpreter_imports"] = spans["verify_decrypt"][0][0] - launched
            for name in ("verify_decrypt", "session_create"):
                steps[name] = sum(ended - began for began, ended in spans[name])
            steps["server_start_first_answer"] = answered - launched - sum(steps.values())
    return ColdStart(total_s=answered - launched, steps=steps)


def prewarmed_cold_start(p: Platform, index: int) -> float:
    """Seconds from handing a pre-warmed server the ~100 MB model to its first 200 answer.

    The router's scale from zero: its pool keeps one ``inference.server
    --standby`` that has imported everything; an activation sends it the model
    and ports, and it verifies, decrypts, loads and serves.
    """
    body = direct_request(p, WIDE, v2_json(p.rows[:1]))
    http_port = free_port()
    log = p.tmp / f"standby-{index}.log"
    process = ManagedProcess(
        name=f"standby-{index}",
        env=p.env,
        log_path=log,
        cwd=PROJECT_ROOT,
        argv=server_argv(STANDBY),
        stdin_pipe=True,
    ).start()
    try:
        deadline = time.monotonic() + 120
        while STANDBY_READY not in (log.read_text() if log.exists() else ""):
            if not process.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the standby never got ready:\n{process.tail()}")
            time.sleep(0.01)  # waiting for the imports, before the clock starts
        launched = time.perf_counter()
        process.send_line(json.dumps(server_args(WIDE, p.wide_version, http_port, free_port())))
        return first_answer(process, http_port, body) - launched
    finally:
        process.stop()


def first_answer(
    process: ManagedProcess, port: int, request: bytes, timeout_s: float = 120
) -> float:
    """perf_counter when ``port`` first answers ``request`` with 200 (polled every 5 ms)."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited before answering:\n{process.tail()}")
        try:
            connection = HttpConnection(port, timeout_s=30.0)
        except OSError:
            time.sleep(0.005)
            continue
        try:
            status, _ = connection.call(request)
        except OSError:
            status = 0
        finally:
            connection.close()
        if status == 200:
            return time.perf_counter()
        time.sleep(0.005)
    raise RuntimeError(f"{process.name} did not answer in {timeout_s:.0f} s:\n{process.tail()}")


# -- the benchmark -----------------------------------------------------------------------------


def run(quick: bool) -> list[Row]:
    sizes = QUICK if quick else FULL
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="falaj-bench-serving-") as tmp,
        platform(Path(tmp)) as p,
    ):
        print(f"serving: platform up in {time.perf_counter() - started:.1f} s")
        return measure(p, sizes)


class Phases:
    """Wall seconds per phase, printed at the end (to keep quick mode within its budget)."""

    def __init__(self) -> None:
        self.took: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.took[name] = time.perf_counter() - started

    def __str__(self) -> str:
        return ", ".join(f"{name} {took:.1f} s" for name, took in self.took.items())


def measure(p: Platform, sizes: Sizes) -> list[Row]:
    live = [p.router_pid, p.predictor.pid, p.broker_pid]
    started, busy, own = time.perf_counter(), busy_seconds(), own_seconds(live)
    phase = Phases()
    rows: list[Row] = []
    with phase("batch-1 latency"):
        rows += latency_rows(p, sizes)
    with phase(f"{RATE} rps"):
        rows += steady_rows(p, sizes)
    with phase("max rps"):
        rows += throughput_rows(p, sizes)
    with phase(f"batch {BATCH}"):
        rows += batch_rows(p, sizes)
    with phase("cold start"):
        rows += cold_start_rows(p, sizes)
    # Everything else this machine ran meanwhile: other processes share the 2 cores.
    others = (busy_seconds() - busy - (own_seconds(live) - own)) / (time.perf_counter() - started)
    rows.append(
        Row(metric="other_processes_cpu_cores", value=round(max(others, 0), 3), unit="cores")
    )
    print(f"serving phases: {phase}")
    if others > 0.2:
        print(
            f"serving: other processes used {others:.2f} cores during this run: "
            "its numbers are not to be trusted"
        )
    _print_goals(rows)
    return rows


def latency_rows(p: Platform, sizes: Sizes) -> list[Row]:
    """Batch 1, sequential: router, direct REST and direct gRPC take turns."""
    latency = batch1_latency(p, sizes)
    router50, direct50, grpc50 = (percentile(latency[k], 50) for k in ("router", "direct", "grpc"))
    return [
        Row(
            metric="rest_p50_ms",
            value=round(router50, 4),
            unit="ms",
            peer="kserve_direct",
            peer_value=round(direct50, 4),
        ),
        Row(
            metric="router_overhead_p50_ms",
            value=round(router50 - direct50, 4),
            unit="ms",
            goal="<= 0.5 ms",
        ),
        Row(
            metric="grpc_p50_ms",
            value=round(grpc50, 4),
            unit="ms",
            peer="kserve_rest_direct",
            peer_value=round(direct50, 4),
        ),
        Row(
            metric="rest_p99_ms",
            value=round(percentile(latency["router"], 99), 4),
            unit="ms",
            peer="kserve_direct",
            peer_value=round(percentile(latency["direct"], 99), 4),
        ),
        Row(metric="grpc_p99_ms", value=round(percentile(latency["grpc"], 99), 4), unit="ms"),
        Row(metric="sequential_requests_per_path", value=sizes.sequential, unit="requests"),
    ]


def direct_request(p: Platform, model: str, body: bytes) -> bytes:
    """A V2 request straight to a predictor, with the token it admits (as the router's)."""
    return http_request(f"/v2/models/{model}/infer", body, {"authorization": f"Bearer {p.token}"})


def routed_request(p: Platform, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    auth = {"authorization": f"Bearer {p.token}"}
    return http_request(f"/v2/models/{MODEL}/infer", body, {**auth, **(headers or {})})


def steady_rows(p: Platform, sizes: Sizes) -> list[Row]:
    """Open loop at ``RATE`` requests/s through the router."""
    steady = loadgen(
        p.router_port,
        routed_request(p, v2_json(p.rows[:1])),
        mode="open",
        rate=RATE,
        connections=CONCURRENCY,
        warmup_s=sizes.warmup_s,
        duration_s=sizes.open_s,
    )
    latencies = steady["latencies_ms"]
    return [
        Row(
            metric=f"rest_p99_ms_at_{RATE}rps",
            value=round(percentile(latencies, 99), 4),
            unit="ms",
            goal="<= 5 ms",
        ),
        Row(
            metric=f"rest_p50_ms_at_{RATE}rps", value=round(percentile(latencies, 50), 4), unit="ms"
        ),
        Row(metric=f"rest_max_ms_at_{RATE}rps", value=round(max(latencies), 4), unit="ms"),
        Row(
            metric=f"client_send_lateness_p99_ms_at_{RATE}rps",
            value=round(percentile(steady["lateness_ms"], 99), 4),
            unit="ms",
        ),
    ]


def throughput_rows(p: Platform, sizes: Sizes) -> list[Row]:
    """Closed loop, batch 1: ours through the router, KServe direct, BentoML; taking turns."""
    one = v2_json(p.rows[:1])
    ours_processes = {
        "router": [p.router_pid],
        "predictor": [p.predictor.pid],
        "broker": [p.broker_pid],
    }
    runs: dict[str, list[Throughput]] = {"ours": [], "direct": [], "bentoml": []}
    with bentoml_peer(p) as peer:
        bento_request = http_request(
            "/predict", json.dumps({"input": p.rows[:1].tolist()}).encode()
        )
        if peer is not None:
            check_answer(peer[0], bento_request, p)
        for _ in range(sizes.repeats):
            runs["ours"].append(
                closed_loop(p.router_port, routed_request(p, one), sizes, ours_processes)
            )
            runs["direct"].append(
                closed_loop(
                    p.predictor.http_port,
                    direct_request(p, MODEL, one),
                    sizes,
                    {"predictor": [p.predictor.pid]},
                )
            )
            if peer is not None:
                runs["bentoml"].append(
                    closed_loop(peer[0], bento_request, sizes, {"bentoml": peer[1]})
                )
    ours, direct = median_run(runs["ours"]), median_run(runs["direct"])
    bento = median_run(runs["bentoml"]) if runs["bentoml"] else None
    peer_name = "bentoml" if bento else None
    peer_rps = round(bento.rps, 1) if bento else None
    cpu = {**ours.cpu_ms, **(bento.cpu_ms if bento else {})}
    return [
        Row(
            metric="rest_max_rps",
            value=round(ours.rps, 1),
            unit="requests/s",
            peer=peer_name,
            peer_value=peer_rps,
            goal=">= bentoml",
        ),
        Row(
            metric="rest_max_rps_kserve_direct",
            value=round(direct.rps, 1),
            unit="requests/s",
            peer=peer_name,
            peer_value=peer_rps,
        ),
        Row(metric="rest_max_rps_connections", value=CONCURRENCY, unit="connections"),
        *(
            Row(metric=f"cpu_ms_per_request_{name}", value=round(ms, 4), unit="ms")
            for name, ms in cpu.items()
        ),
        Row(
            metric="cpu_ms_per_request_kserve_direct",
            value=round(direct.cpu_ms["predictor"], 4),
            unit="ms",
        ),
        Row(
            metric="client_cpu_cores_at_max_rps",
            value=round(ours.client_cpu_share, 3),
            unit="cores",
        ),
        *(
            [
                Row(
                    metric="client_cpu_cores_at_max_rps_bentoml",
                    value=round(bento.client_cpu_share, 3),
                    unit="cores",
                )
            ]
            if bento
            else []
        ),
    ]


def median_run(runs: list[Throughput]) -> Throughput:
    return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]


def check_answer(port: int, request: bytes, p: Platform) -> None:
    """The peer must answer the model's own probability before it is timed."""
    connection = HttpConnection(port)
    try:
        status, answer = connection.call(request)
    finally:
        connection.close()
    if status != 200:
        raise RuntimeError(f"port {port} answered {status}: {answer[:300]!r}")
    expected = create_session(p.onnx_bytes).run(None, {"input": p.rows[:1]})[0].ravel()
    np.testing.assert_allclose(probabilities(answer), expected, rtol=1e-5)


def batch_rows(p: Platform, sizes: Sizes) -> list[Row]:
    """``BATCH`` rows a request through the router: JSON, then the binary tensor extension."""
    batch = p.rows[:BATCH]
    as_json = closed_loop(p.router_port, routed_request(p, v2_json(batch)), sizes, {})
    body, headers = v2_binary(batch)
    as_binary = closed_loop(p.router_port, routed_request(p, body, headers), sizes, {})
    inprocess = inprocess_rows_per_s(p.onnx_bytes, batch, sizes.inprocess_s)
    return [
        Row(
            metric=f"batch{BATCH}_rows_per_s",
            value=round(as_json.rps * BATCH),
            unit="rows/s",
            peer="onnxruntime_inprocess",
            peer_value=round(inprocess),
            goal=">= 0.5 x onnxruntime_inprocess",
        ),
        Row(
            metric=f"batch{BATCH}_rows_per_s_binary",
            value=round(as_binary.rps * BATCH),
            unit="rows/s",
            peer="onnxruntime_inprocess",
            peer_value=round(inprocess),
        ),
    ]


def cold_start_rows(p: Platform, sizes: Sizes) -> list[Row]:
    """Plain starts for the headline; marked ones (taking turns) for the breakdown."""
    plain: list[ColdStart] = []
    marked: list[ColdStart] = []
    prewarmed: list[float] = []
    for i in range(sizes.cold_starts):
        prewarmed.append(prewarmed_cold_start(p, i))
        plain.append(cold_start(p, 2 * i))
        marked.append(cold_start(p, 2 * i + 1, marked=True))
    rows: list[Row] = [
        # The product's scale from zero: the router's pool hands the model to
        # its pre-warmed server (inference.server --standby).
        Row(
            metric="cold_start_s_100mb",
            value=round(statistics.median(prewarmed), 3),
            unit="s",
            goal="<= 2 s",
        ),
        # The same without a pre-warmed server: a fresh process, imports included.
        Row(
            metric="cold_start_s_100mb_fresh_process",
            value=round(statistics.median(s.total_s for s in plain), 3),
            unit="s",
        ),
        Row(
            metric="cold_start_s_100mb_marked",
            value=round(statistics.median(s.total_s for s in marked), 3),
            unit="s",
        ),
    ]
    broken_down = [s for s in marked if s.steps]
    if not broken_down:
        print("serving: the marked cold starts did not time their steps (the predictor changed?)")
    for step in broken_down[0].steps if broken_down else ():
        rows.append(
            Row(
                metric=f"cold_start_{step}_s",
                value=round(statistics.median(s.steps[step] for s in broken_down), 3),
                unit="s",
            )
        )
    return rows


def _print_goals(rows: list[Row]) -> None:
    for row in rows:
        goal = getattr(row, "goal", None)
        if goal is None:
            continue
        op, _, bound = goal.partition(" ")
        number = bound.split()[0]
        if number.replace(".", "", 1).isdigit() and "x" not in bound:
            reference = float(number)
        else:  # relative to the peer: ">= bentoml", ">= 0.5 x peer"
            if row.peer_value is None:
                continue
            reference = (float(number) if "x" in bound else 1.0) * row.peer_value
        met = row.value <= reference if op == "<=" else row.value >= reference
        print(
            f"serving goal {row.metric} {goal}: {row.value:g} {row.unit} -> "
            f"{'met' if met else 'MISSED'}"
        )
