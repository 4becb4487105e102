"""KServe's V2 gRPC server behind the bearer gate, over TLS when certificates are set.

kserve 0.21's ``GRPCServer`` fixes its interceptors (logging, errors to status
codes) and listens on an insecure port, with no hook for either. This subclass
builds the same server — KServe's servicer, its error interceptor, its message
size options — with ``GrpcBearerGate`` first and ``add_secure_port`` when the
settings carry a certificate. ``inference.server`` imports it only after kserve
may be imported (see that module's docstring).
"""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
from grpc import aio
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer


class GatedGrpcServer(GRPCServer):
    def __init__(
        self,
        *args: Any,
        gate: aio.ServerInterceptor,
        credentials: grpc.ServerCredentials | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._gate = gate
        self._credentials = credentials

    async def start(self, max_workers: int) -> None:
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            # The gate first: a refused call never reaches the servicer. KServe's
            # per-call log line is left out, as its REST access log is.
            interceptors=(self._gate, ExceptionToStatusInterceptor()),
            options=[
                ("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                (
                    "grpc.max_receive_message_length",
                    self._kwargs.get("grpc_max_receive_message_length"),
                ),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self._data_plane, self._model_repository_extension), self._server
        )
        address = f"[::]:{self._port}"
        if self._credentials is None:
            self._server.add_insecure_port(address)
        else:
            self._server.add_secure_port(address, self._credentials)
        await self._server.start()
        await self._server.wait_for_termination()
