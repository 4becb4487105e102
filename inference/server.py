"""One KServe ModelServer serving one model version.

    python -m inference.server --model fraud --version 1 --http-port 8085 --grpc-port 8086
        [--variant auto|fp32|int8] [--device auto|cpu|cuda] [--online-features lazy|eager|off]

``--variant`` picks the model variant (``auto``: int8 where training kept one
and the session runs on the CPU, else fp32); ``--device cuda`` insists on a GPU
(the GPU ServingRuntime passes it) and ``cpu`` never uses one;
``--online-features`` says when Feast is imported for requests that name entity
ids instead of features (``inference.predictor``).

kserve 0.21 parses ``sys.argv`` when ``kserve.model_server`` is imported (and
``import kserve`` imports it), and its parser accepts abbreviations: our
``--model`` would silently become its ``--model_name``, and any future flag of
ours could collide with one of its own. So this module imports nothing of
kserve at the top; ``main`` parses our flags first, then hands kserve a clean
argv (the program name only) before the first kserve import, and passes every
setting to ``ModelServer`` explicitly. KServe needs no Kubernetes and no
environment variables to run locally.

``--standby`` alone pre-warms: the process imports everything, then reads
the real arguments as one JSON list on stdin (``standby``); the router's pool
keeps one, so a scale-from-zero start only loads the model.

The snake_case spellings (``--model_name``, ``--http_port``, ``--grpc_port``)
are accepted too, as a ServingRuntime passes them. A refused version does not
exit: the server stays up with the model not ready, so readiness probes and the
router see why (503 with the reason) instead of a crash loop.

Every endpoint but the health probes admits the caller's bearer token, REST and
gRPC alike (``inference.access``); with ``FALAJ_TLS_*`` set both listen over TLS.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from falaj.context import Context
from falaj.errors import ConfigError
from falaj.logs import configure_logging
from falaj.settings import Settings
from falaj.tls import grpc_credentials, uvicorn_options

#: The choices of the serving flags, as ``inference.predictor`` and
#: ``inference.session`` name them (those modules import kserve and onnxruntime,
#: which must wait until the flags are parsed).
VARIANTS = ("auto", "fp32", "int8")
DEVICES = ("auto", "cpu", "cuda")
ONLINE_FEATURES = ("lazy", "eager", "off")


@dataclass(frozen=True, kw_only=True)
class ServerArgs:
    model: str
    version: int | None
    http_port: int
    grpc_port: int
    variant: str = "auto"
    device: str = "auto"
    online_features: str = "lazy"


def parse_args(argv: Sequence[str]) -> ServerArgs:
    parser = argparse.ArgumentParser(
        prog="python -m inference.server",
        description="Serve one model version of the Falaj registry with KServe.",
        allow_abbrev=False,
    )
    parser.add_argument("--model", "--model_name", dest="model", required=True)
    parser.add_argument(
        "--version", type=int, default=None, help="model version; the latest when left out"
    )
    parser.add_argument("--http-port", "--http_port", dest="http_port", type=int, default=8080)
    parser.add_argument("--grpc-port", "--grpc_port", dest="grpc_port", type=int, default=8081)
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        default="auto",
        help="model variant: auto (int8 where training kept one and the session runs on the "
        "CPU, else fp32), or force fp32 or int8",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto (CUDA where onnxruntime has it), cpu, or cuda (refuse to serve without it)",
    )
    parser.add_argument(
        "--online-features",
        dest="online_features",
        choices=ONLINE_FEATURES,
        default="lazy",
        help="entity-id requests read features from Feast: import it on the first one (lazy), "
        "at start (eager), or refuse them (off)",
    )
    parsed = parser.parse_args(list(argv))
    if not parsed.model:
        parser.error("--model: expected a model name, got an empty one")
    if parsed.version is not None and parsed.version < 1:
        parser.error(f"--version: expected a model version >= 1, got {parsed.version}")
    return ServerArgs(
        model=parsed.model,
        version=parsed.version,
        http_port=parsed.http_port,
        grpc_port=parsed.grpc_port,
        variant=parsed.variant,
        device=parsed.device,
        online_features=parsed.online_features,
    )


class JsonByDefault:
    """ASGI middleware: a POST that names no content type is JSON.

    tritonclient.http posts JSON without a ``Content-Type``. FastAPI (0.132 on)
    then hands kserve the raw bytes, which kserve takes for the binary tensor
    extension and refuses for want of ``inference-header-content-length``. A
    body that carries neither header can only be JSON, so it is labelled so;
    one with the binary header is left as it came.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            names = {name for name, _ in scope["headers"]}
            if not names & {b"content-type", b"inference-header-content-length"}:
                json_type = (b"content-type", b"application/json")
                scope = {**scope, "headers": [*scope["headers"], json_type]}
        await self.app(scope, receive, send)


def server_argv(*args: str) -> list[str]:
    """The command line of a model server in this interpreter, with ``args``."""
    return [sys.executable, "-m", "inference.server", *args]


def server_args(model: str, version: int, http_port: int, grpc_port: int) -> list[str]:
    """The flags that serve ``version`` of ``model`` on these ports (after the program)."""
    return [
        "--model",
        model,
        "--version",
        str(version),
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
    ]


#: The flag of a pre-warmed server (alone on the command line).
STANDBY = "--standby"
#: What a standby prints once it has imported everything (benchmarks wait for it).
STANDBY_READY = "standby.ready"


def standby() -> list[str]:
    """Import what serving needs, then wait for the arguments on stdin (one JSON list).

    The router's pool keeps one such process while scale to zero is on: the
    imports (kserve, onnxruntime, model-signing: ~1.4 s of a 2.5 s cold start
    on two cores) are paid before any request needs them, and the version that
    is activated next only loads. EOF (the pool went away) ends it.
    """
    sys.argv = sys.argv[:1]  # before any kserve import, as in main()
    import kserve.model_server  # noqa: F401

    import inference.access
    import inference.grpc_server
    import inference.predictor  # noqa: F401
    from falaj.registry import ModelRegistry  # noqa: F401

    print(STANDBY_READY, flush=True)
    line = sys.stdin.readline()
    if not line.strip():
        raise SystemExit(0)
    argv = json.loads(line)
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise SystemExit(f"{STANDBY}: expected a JSON list of arguments on stdin, got {line!r}")
    return argv


def main(argv: Sequence[str] | None = None) -> None:
    given = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(standby() if given == [STANDBY] else given)
    settings = Settings.from_env(os.environ)
    configure_logging("predictor", settings.log_level)
    ctx = Context.create(settings, actor="predictor")
    # See the module docstring: kserve must not see our flags.
    sys.argv = sys.argv[:1]
    from kserve import ModelServer
    from kserve.model_server import app as kserve_app
    from kserve.model_server import args as kserve_args

    from falaj.registry import ModelRegistry
    from inference.access import BearerGate, GrpcBearerGate
    from inference.grpc_server import GatedGrpcServer
    from inference.predictor import (
        OnlineFeaturesMode,
        OnnxPredictor,
        ServingOptions,
        VariantChoice,
    )
    from inference.session import Device

    registry = ModelRegistry(ctx)
    version = args.version
    if version is None:
        latest = registry.latest(args.model)
        if latest is None:
            raise ConfigError(
                f"--model {args.model}: the registry at {registry.root} has no version of it; "
                "pass --version or register one first"
            )
        version = latest.version
    options = ServingOptions(
        variant=VariantChoice(args.variant),
        device=Device(args.device),
        online_features=OnlineFeaturesMode(args.online_features),
    )
    predictor = OnnxPredictor(
        ctx, model=args.model, version=version, registry=registry, options=options
    )
    predictor.load()
    tls = uvicorn_options(settings)
    server = ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        # Our gated gRPC server is started below, in kserve's place.
        enable_grpc=False,
        enable_docs_url=False,
        # Latency per request is already measured by the router; one log line
        # per prediction would dominate a small pod's log volume.
        enable_latency_logging=False,
        grace_period=5,
        ssl_certfile=tls.get("ssl_certfile"),
        ssl_keyfile=tls.get("ssl_keyfile"),
    )
    # With a certificate, kserve moves a default port 8080 to 8443; ours was chosen.
    server.http_port = args.http_port
    name = f"predictor/{args.model}/{version}"
    grpc_server = GatedGrpcServer(
        args.grpc_port,
        server.dataplane,
        server.model_repository_extension,
        kwargs=vars(kserve_args),
        grace_period=server.grace_period,
        gate=GrpcBearerGate(ctx=ctx, server=name),
        credentials=grpc_credentials(settings),
    )
    # Where kserve keeps its own gRPC server: its stop() (SIGTERM) stops ours too.
    server._grpc_server = grpc_server
    server.servers.append(grpc_server.start(server.max_threads))
    # Registered directly: ModelServer.start([model]) refuses to run when no
    # model is ready, and a refused version must stay up to report why.
    server.register_model(predictor)
    kserve_app.add_middleware(JsonByDefault)
    # Added last, so outermost: a refused request is answered before anything reads it.
    kserve_app.add_middleware(BearerGate, ctx=ctx, server=name)
    # ModelServer configured logging above. An access line and two timing lines
    # per prediction were ~6% of a predictor's CPU (py-spy); the router counts
    # requests and latency per variant instead.
    for name in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Everything imported and loaded so far lives as long as the process: out of
    # the collector's reach, a full collection no longer walks it (it stalled
    # requests for ~110 ms, the whole p99 at 200 requests/s).
    gc.freeze()
    server.start([])


if __name__ == "__main__":
    main()
