"""Who may call a model server: the bearer gate of its REST and gRPC endpoints.

Behind KServe's ingress on a cluster the caller's own token (an OIDC JWT)
reaches the predictor; locally the router forwards the caller's
``Authorization`` header. Either way the predictor admits the caller itself:
no hop trusts the one before it. Inference needs ``predict``; metadata, model
readiness and ``/metrics`` need ``read``; loading or unloading a model through
KServe's repository extension needs ``deploy``. The health probes (``/``,
``/v2/health/live``, ``/v2/health/ready`` and their gRPC twins) stay open, as
kubelet and Knative's queue-proxy probe without a token; they say only whether
the server is up. A refusal is a 401 (no or unknown token, with
``WWW-Authenticate: Bearer``) or a 403 (a role that may not), audited as
``auth.refused`` like every other endpoint's.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio
from starlette.concurrency import run_in_threadpool

from falaj.auth import Action
from falaj.context import Context
from falaj.errors import AuthError, PermissionDenied

#: Probes carry no token and learn nothing but "up".
OPEN_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready"})
#: The POST paths that run the model (KServe V1 and V2).
PREDICT_SUFFIXES = (":predict", ":explain", "/infer")

GRPC_SERVICE = "/inference.GRPCInferenceService/"
OPEN_RPCS = frozenset({f"{GRPC_SERVICE}ServerLive", f"{GRPC_SERVICE}ServerReady"})
RPC_ACTIONS = {
    f"{GRPC_SERVICE}ModelInfer": Action.PREDICT,
    f"{GRPC_SERVICE}RepositoryModelLoad": Action.DEPLOY,
    f"{GRPC_SERVICE}RepositoryModelUnload": Action.DEPLOY,
}


def required_action(method: str, path: str) -> Action | None:
    """What a REST request needs the caller's role to allow; None for the open probes."""
    if path in OPEN_PATHS:
        return None
    if method == "POST":
        # Any other POST is the repository extension's load or unload.
        return Action.PREDICT if path.endswith(PREDICT_SUFFIXES) else Action.DEPLOY
    return Action.READ


def rpc_action(method: str) -> Action | None:
    """What a gRPC method needs; None for the open probes; ``read`` for the rest."""
    if method in OPEN_RPCS:
        return None
    return RPC_ACTIONS.get(method, Action.READ)


def _admit_inline(ctx: Context, authorization: str | None, action: Action) -> None:
    # Inline, not in a thread: a digest and a cached lookup cost less than the hop.
    principal = ctx.tokens.authenticate(authorization)
    principal.require(action)


class BearerGate:
    """ASGI middleware in front of KServe's FastAPI app: every request but a probe admitted."""

    def __init__(self, app: Any, *, ctx: Context, server: str) -> None:
        self.app = app
        self.ctx = ctx
        self.server = server

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        action = required_action(scope["method"], scope["path"])
        if action is None:
            await self.app(scope, receive, send)
            return
        authorization = next(
            (
                value.decode("latin-1")
                for name, value in scope["headers"]
                if name == b"authorization"
            ),
            None,
        )
        try:
            _admit_inline(self.ctx, authorization, action)
        except AuthError as exc:
            resource = f"{self.server} {scope['method']} {scope['path']}"
            await run_in_threadpool(self.ctx.record_refusal, exc, resource=resource)
            await _refuse(send, exc)
            return
        await self.app(scope, receive, send)


async def _refuse(send: Callable[[dict[str, Any]], Awaitable[None]], exc: AuthError) -> None:
    body = json.dumps({"error": str(exc)}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if not isinstance(exc, PermissionDenied):
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": int(exc.status), "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GrpcBearerGate(aio.ServerInterceptor):
    """The same gate for KServe's gRPC server: ``authorization`` metadata, same roles."""

    def __init__(self, *, ctx: Context, server: str) -> None:
        self.ctx = ctx
        self.server = server

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        action = rpc_action(method)
        if action is None:
            return await continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata or ()
        authorization = next((str(v) for k, v in metadata if k == "authorization"), None)
        try:
            _admit_inline(self.ctx, authorization, action)
        except AuthError as exc:
            await run_in_threadpool(
                self.ctx.record_refusal, exc, resource=f"{self.server} grpc {method}"
            )
            handler = await continuation(handler_call_details)
            return _refusing(handler, exc)
        return await continuation(handler_call_details)


def _refusing(handler: grpc.RpcMethodHandler, exc: AuthError) -> grpc.RpcMethodHandler:
    """A handler of the same shape that answers the refusal instead of running the method."""
    code = (
        grpc.StatusCode.PERMISSION_DENIED
        if isinstance(exc, PermissionDenied)
        else grpc.StatusCode.UNAUTHENTICATED
    )

    async def refuse(_request: Any, context: aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, str(exc))

    # Every method of KServe's V2 service is unary-unary.
    return grpc.unary_unary_rpc_method_handler(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
