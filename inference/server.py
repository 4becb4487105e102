"""One KServe ModelServer serving one model version.

    python -m inference.server --model fraud --version 1 --http-port 8085 --grpc-port 8086

kserve 0.21 parses ``sys.argv`` when ``kserve.model_server`` is imported (and
``import kserve`` imports it), and its parser accepts abbreviations: our
``--model`` would silently become its ``--model_name``, and any future flag of
ours could collide with one of its own. So this module imports nothing of
kserve at the top; ``main`` parses our flags first, then hands kserve a clean
argv (the program name only) before the first kserve import, and passes every
setting to ``ModelServer`` explicitly. KServe needs no Kubernetes and no
environment variables to run locally.

The snake_case spellings (``--model_name``, ``--http_port``, ``--grpc_port``)
are accepted too, as a ServingRuntime passes them. A refused version does not
exit: the server stays up with the model not ready, so readiness probes and the
router see why (503 with the reason) instead of a crash loop.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from falaj.context import Context
from falaj.errors import ConfigError
from falaj.logs import configure_logging
from falaj.settings import Settings


@dataclass(frozen=True, kw_only=True)
class ServerArgs:
    model: str
    version: int | None
    http_port: int
    grpc_port: int


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
    parsed = parser.parse_args(list(argv))
    if parsed.version is not None and parsed.version < 1:
        parser.error(f"--version: expected a model version >= 1, got {parsed.version}")
    return ServerArgs(
        model=parsed.model,
        version=parsed.version,
        http_port=parsed.http_port,
        grpc_port=parsed.grpc_port,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings.from_env(os.environ)
    configure_logging("predictor", settings.log_level)
    ctx = Context.create(settings, actor="predictor")
    # See the module docstring: kserve must not see our flags.
    sys.argv = sys.argv[:1]
    from kserve import ModelServer

    from falaj.registry import ModelRegistry
    from inference.predictor import OnnxPredictor

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
    predictor = OnnxPredictor(ctx, model=args.model, version=version, registry=registry)
    predictor.load()
    server = ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        enable_docs_url=False,
        # Latency per request is already measured by the router; one log line
        # per prediction would dominate a small pod's log volume.
        enable_latency_logging=False,
        grace_period=5,
    )
    # Registered directly: ModelServer.start([model]) refuses to run when no
    # model is ready, and a refused version must stay up to report why.
    server.register_model(predictor)
    server.start([])


if __name__ == "__main__":
    main()
