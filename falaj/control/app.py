"""The control API and dashboard: pages for people, the same data as JSON for scripts.

    python -m falaj.control        (FALAJ_* settings; host:control_port, 8090 by default)

| page | JSON | needs | buttons (need) |
|---|---|---|---|
| ``/`` | ``GET /api/overview`` | read |  |
| ``/models`` | ``/api/models``, ``/api/models/<m>/<v>`` | read |  |
| ``/rollouts`` | ``GET /api/rollouts`` | read | promote, rollback (deploy) |
| ``/drift`` | ``GET /api/drift`` | read |  |
| ``/events`` | ``GET /api/events`` | read | replay (replay) |
| ``/quarantine`` | ``GET /api/quarantine`` | read |  |
| ``/training`` | ``GET /api/training`` | read |  |
| ``/audit`` | ``GET /api/audit`` | read-audit |  |
| ``/admin`` | ``GET /api/tokens`` | admin | issue, revoke (admin) |

A person logs in with a token (``POST /login``) and gets a session cookie; a
script sends ``Authorization: Bearer``. Either way every request is admitted
by ``Context.admit`` (refusals audited), a page's buttons are drawn only for a
role that may press them, and the server checks again when one is pressed.
A POST from a session must carry its CSRF token (``x-csrf-token``). ``GET
/metrics`` (``read``) counts what people did (``falaj_control_actions``). The
probes (``/healthz``) and the static files (code, no data) are open.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import plotly
import uvicorn
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from falaj.auth import PERMISSIONS, Action, Principal, Role
from falaj.context import Context
from falaj.control import plots, views
from falaj.control.sessions import CSRF_HEADER, SESSION_COOKIE, Session, Sessions, csrf_matches
from falaj.control.views import SERVICE_ACCOUNT
from falaj.errors import AuthError, FalajError, PermissionDenied
from falaj.events import EventType
from falaj.logs import configure_logging, get_logger
from falaj.metrics import CONTENT_TYPE, ActionOutcome, Metrics
from falaj.publisher import EventPublisher
from falaj.rollouts import RolloutAction, Rollouts, RolloutStep, announcement, describe_split
from falaj.settings import Settings
from falaj.tls import uvicorn_options

#: The CloudEvent source and audit ``requested_by`` of what the dashboard does.
CONTROL_SOURCE = "/falaj/control"
#: A login form is a token and a path: anything longer is not one.
MAX_FORM_BYTES = 8192
STATIC = Path(__file__).parent / "static"
#: The static files served, by name: the page's own, and the plotly.js inside the plotly wheel.
STATIC_FILES = {
    "dashboard.css": STATIC / "dashboard.css",
    "dashboard.js": STATIC / "dashboard.js",
    "plotly.min.js": Path(plotly.__file__).parent / "package_data" / "plotly.min.js",
}
#: Every response: no inline script, no framing, no content sniffing, no referrer.
SECURITY_HEADERS = {
    # plotly.js sets style attributes as it draws, so inline styles are allowed; scripts are not.
    "content-security-policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Page:
    name: str
    path: str
    title: str
    needs: Action
    #: Plots above the page's tables (a long table would push them out of sight).
    plots_first: bool = False


PAGES = (
    Page("overview", "/", "Overview", Action.READ),
    Page("models", "/models", "Models", Action.READ),
    Page("rollouts", "/rollouts", "Traffic", Action.READ),
    Page("drift", "/drift", "Drift", Action.READ),
    Page("events", "/events", "Events", Action.READ, plots_first=True),
    Page("quarantine", "/quarantine", "Quarantine", Action.READ),
    Page("training", "/training", "Training", Action.READ),
    Page("audit", "/audit", "Audit", Action.READ_AUDIT),
    Page("admin", "/admin", "Admin", Action.ADMIN),
)
PAGE = {page.name: page for page in PAGES}
#: Where a page's JSON is under /api when that is not the page's own name.
API_PATHS = {"admin": "tokens"}
#: The rollout steps the traffic page has a button for.
BUTTONS = {"promote": RolloutAction.PROMOTE, "rollback": RolloutAction.ROLLBACK}


@dataclass(frozen=True)
class Caller:
    principal: Principal
    token: str
    #: The browser session the request came with; None for a bearer token.
    session: Session | None

    def may(self, action: Action) -> bool:
        return action in PERMISSIONS[self.principal.role]


class NotLoggedIn(AuthError):
    """A page was asked for without a session: the browser is sent to the login page."""


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("cache-control", "no-store")
        return response


class ControlAPI:
    """The handlers; ``create_app`` routes to them."""

    def __init__(
        self,
        ctx: Context,
        publisher: EventPublisher | None,
        sessions: Sessions | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.ctx = ctx
        self.publisher = publisher
        self.sessions = sessions or Sessions()
        self.metrics = metrics if metrics is not None else Metrics()
        self.templates = Environment(
            loader=PackageLoader("falaj.control", "templates"),
            autoescape=select_autoescape(default=True),
        )
        self.log = get_logger(component="control")

    # -- who is asking -------------------------------------------------------------------

    async def caller(self, request: Request, action: Action) -> Caller:
        """The caller, admitted for ``action``: a bearer token, or else a session's token."""
        header = request.headers.get("authorization")
        session = None
        if header:
            token = header.partition(" ")[2].strip()
        else:
            session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
            if session is None:
                raise NotLoggedIn("log in first: no session (or it expired), and no bearer token")
            token, header = session.token, f"Bearer {session.token}"
            if request.method == "POST":
                sent = request.headers.get(CSRF_HEADER) or await _form_field(request, "csrf")
                if not csrf_matches(session, sent):
                    raise PermissionDenied(
                        f"a POST from the dashboard must carry its session's {CSRF_HEADER} "
                        "header; reload the page and press the button again"
                    )
        principal = await run_in_threadpool(
            self.ctx.admit, header, action, resource=f"control:{request.url.path}"
        )
        return Caller(principal, token, session)

    # -- login ---------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        return self._html("login.html", next=_safe_next(request.query_params.get("next")))

    async def login(self, request: Request) -> Response:
        form = await _form(request)
        token = form.get("token", "").strip()
        target = _safe_next(form.get("next"))
        try:
            principal = await run_in_threadpool(
                self.ctx.tokens.authenticate, f"Bearer {token}" if token else None
            )
        except AuthError as exc:
            await run_in_threadpool(self.ctx.record_refusal, exc, resource="control:/login")
            return self._html(
                "login.html", next=target, error=str(exc), status=HTTPStatus.UNAUTHORIZED
            )
        session_id, _ = self.sessions.open(token)
        await run_in_threadpool(
            self.ctx.audit.record,
            "auth.login",
            actor=principal.subject,
            role=str(principal.role),
            resource="control:/login",
            region=self.ctx.settings.region,
        )
        response = RedirectResponse(target, status_code=HTTPStatus.SEE_OTHER)
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=int(self.sessions.ttl_s),
            httponly=True,
            samesite="strict",
            secure=self.ctx.settings.tls_cert_file is not None,
        )
        return response

    async def logout(self, request: Request) -> Response:
        await self.caller(request, Action.READ)  # a session's POST: its CSRF token is checked
        self.sessions.close(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=HTTPStatus.SEE_OTHER)
        response.delete_cookie(SESSION_COOKIE)
        return response

    # -- pages ---------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        page = PAGE[request.scope["route"].name]
        caller = await self.caller(request, page.needs)
        data, shown = await run_in_threadpool(self._data_and_plots, page.name, caller, request)
        return self._page(request, caller, page, f"{page.name}.html", data, shown)

    async def version_page(self, request: Request) -> Response:
        caller = await self.caller(request, Action.READ)
        model, number = request.path_params["model"], request.path_params["version"]
        data = await run_in_threadpool(views.version, self.ctx, model, number)
        return self._page(request, caller, PAGE["models"], "version.html", data, [])

    def _page(
        self,
        request: Request,
        caller: Caller,
        page: Page,
        template: str,
        data: dict[str, Any],
        shown: list[plots.Plot],
    ) -> Response:
        """A page in the frame every page shares: who is logged in, what they may open and press."""
        return self._html(
            template,
            page=page,
            data=data,
            plots=shown,
            me=caller.principal,
            can={str(a) for a in PERMISSIONS[caller.principal.role]},
            nav=[p for p in PAGES if caller.may(p.needs)],
            csrf=caller.session.csrf if caller.session else "",
            query=dict(request.query_params),
        )

    def _data_and_plots(
        self, name: str, caller: Caller, request: Request
    ) -> tuple[dict[str, Any], list[plots.Plot]]:
        data = self._data(name, caller, request)
        return data, self._plots(name, data)

    def _data(self, name: str, caller: Caller, request: Request) -> dict[str, Any]:
        limit = _limit(request)
        match name:
            case "overview":
                return views.overview(self.ctx)
            case "models":
                return views.models(self.ctx)
            case "rollouts":
                return views.rollouts(self.ctx, caller.token)
            case "drift":
                return views.drift(self.ctx)
            case "events":
                return views.events(
                    self.ctx, caller.token, limit=limit, event_type=_event_type(request)
                )
            case "quarantine":
                return views.quarantine(self.ctx, limit=limit)
            case "training":
                return views.training(self.ctx, caller.token)
            case "audit":
                return views.audit(
                    self.ctx, limit=limit, action=request.query_params.get("action") or None
                )
            case "admin":
                return views.tokens(self.ctx)
        raise AssertionError(name)

    def _plots(self, name: str, data: dict[str, Any]) -> list[plots.Plot]:
        match name:
            case "models":
                return plots.metrics_by_version(data["models"])
            case "rollouts":
                return [plots.traffic(rollout) for rollout in data["rollouts"]]
            case "drift":
                return [
                    plot
                    for series in data["series"]
                    for plot in plots.drift_over_time(series, data["thresholds"])
                ]
            case "events":
                return [plots.events_by_type(data["by_type"])] if data["by_type"] else []
            case "training":
                return [plots.training_loss(data["loss"])] if data["loss"] else []
        return []

    # -- the same, as JSON ---------------------------------------------------------------

    async def api(self, request: Request) -> Response:
        page = PAGE[request.scope["route"].name.removeprefix("api-")]
        caller = await self.caller(request, page.needs)
        data = await run_in_threadpool(self._data, page.name, caller, request)
        return JSONResponse(data)

    async def api_version(self, request: Request) -> Response:
        await self.caller(request, Action.READ)
        model, number = request.path_params["model"], request.path_params["version"]
        return JSONResponse(await run_in_threadpool(views.version, self.ctx, model, number))

    # -- what the buttons do -------------------------------------------------------------

    async def rollout(self, request: Request) -> Response:
        caller = await self.caller(request, Action.DEPLOY)
        action = BUTTONS.get(request.path_params["action"])
        if action is None:
            raise _BadRequest(
                f"expected one of {', '.join(BUTTONS)}, got {request.path_params['action']!r}; "
                "'falaj rollout' does the other steps"
            )
        body = await _json_body(request)
        step = RolloutStep(
            model=request.path_params["model"],
            action=action,
            reason=str(body.get("reason") or f"{action} from the dashboard"),
            requested_by=CONTROL_SOURCE,
        )
        result = await run_in_threadpool(self._apply, step, caller.principal)
        announced = False
        if result.changed and self.publisher is not None:
            event = announcement(result, region=self.ctx.settings.region, source=CONTROL_SOURCE)
            try:
                await run_in_threadpool(self.publisher.publish, event)
                announced = True
            except FalajError as exc:
                # The step stands (stored and audited); the router still sees it on its next read.
                self.log.error("rollout.announce.failed", model=step.model, error=str(exc))
        return JSONResponse(
            {
                "model": step.model,
                "action": str(action),
                "changed": result.changed,
                "before": describe_split(result.before),
                "after": describe_split(result.after),
                "announced": announced,
            }
        )

    def _apply(self, step: RolloutStep, principal: Principal) -> Any:
        from falaj.deployments import open_traffic_store
        from falaj.registry import ModelRegistry

        store = open_traffic_store(self.ctx, service_account=SERVICE_ACCOUNT)
        try:
            return Rollouts(self.ctx, store, ModelRegistry(self.ctx)).apply(
                step, actor=principal.subject, role=str(principal.role)
            )
        finally:
            store.close()

    async def replay(self, request: Request) -> Response:
        caller = await self.caller(request, Action.REPLAY)
        letter = request.path_params["id"]
        # The broker admits the caller again and audits the replay in the caller's name.
        result = await run_in_threadpool(views.replay, self.ctx, caller.token, letter)
        return JSONResponse(result, status_code=HTTPStatus.ACCEPTED)

    async def issue_token(self, request: Request) -> Response:
        caller = await self.caller(request, Action.ADMIN)
        body = await _json_body(request)
        subject = str(body.get("subject") or "").strip()
        try:
            role = Role(str(body.get("role")))
        except ValueError:
            raise _BadRequest(
                f"expected a role, one of {', '.join(Role)}; got {body.get('role')!r}"
            ) from None
        if not subject or len(subject) > 200:
            raise _BadRequest("expected a subject (who the token is for), 1 to 200 characters")
        token = await run_in_threadpool(self.ctx.tokens.issue, subject, role)
        await run_in_threadpool(self._audit_admin, "token.issued", caller, subject, str(role))
        # The token is shown once, here; only its digest is kept.
        return JSONResponse(
            {"subject": subject, "role": str(role), "token": token},
            status_code=HTTPStatus.CREATED,
        )

    async def revoke_token(self, request: Request) -> Response:
        caller = await self.caller(request, Action.ADMIN)
        subject = request.path_params["subject"]
        revoked = await run_in_threadpool(self.ctx.tokens.revoke, subject)
        if not revoked:
            return JSONResponse(
                {"error": f"no token of {subject!r}; GET /api/tokens lists who holds one"},
                status_code=HTTPStatus.NOT_FOUND,
            )
        await run_in_threadpool(self._audit_admin, "token.revoked", caller, subject, None)
        return JSONResponse({"subject": subject, "revoked": revoked})

    def _audit_admin(self, action: str, caller: Caller, subject: str, role: str | None) -> None:
        self.ctx.audit.record(
            action,
            actor=caller.principal.subject,
            role=str(caller.principal.role),
            resource=f"token/{subject}",
            region=self.ctx.settings.region,
            details={"role": role} if role else {},
        )

    # -- what people did, counted ---------------------------------------------------------

    def counted(self, action: str | Callable[[Request], str | None], handler: Endpoint) -> Endpoint:
        """``handler``, counted in ``falaj_control_actions`` by what its answer says.

        ``action`` may read the request (the button pressed); None counts nothing,
        so a label never takes a value nobody declared.
        """

        async def endpoint(request: Request) -> Response:
            name = action(request) if callable(action) else action
            try:
                response = await handler(request)
            except AuthError:
                self._count(name, ActionOutcome.REFUSED)
                raise
            except FalajError:
                self._count(name, ActionOutcome.FAILED)
                raise
            status = response.status_code
            self._count(
                name,
                ActionOutcome.SUCCESS
                if status < 400
                else ActionOutcome.REFUSED
                if status in (401, 403)
                else ActionOutcome.FAILED,
            )
            return response

        return endpoint

    def _count(self, action: str | None, outcome: ActionOutcome) -> None:
        if action is not None:
            self.metrics.control_actions.labels(action, outcome).inc()

    async def metrics_page(self, request: Request) -> Response:
        await self.caller(request, Action.READ)
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE)

    # -- plumbing ------------------------------------------------------------------------

    async def static(self, request: Request) -> Response:
        path = STATIC_FILES.get(request.path_params["name"])
        if path is None:
            return Response("not found", status_code=HTTPStatus.NOT_FOUND)
        return FileResponse(path, headers={"cache-control": "max-age=3600"})

    async def healthz(self, _: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def on_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FalajError)
        status = HTTPStatus(int(exc.status))
        # A person's browser gets a page (or the login page); a script, JSON and a status.
        wants_page = request.method == "GET" and not request.url.path.startswith(
            ("/api/", "/metrics")
        )
        if wants_page and isinstance(exc, AuthError) and not isinstance(exc, PermissionDenied):
            # No session, or its token was revoked or expired: log in (again).
            self.sessions.close(request.cookies.get(SESSION_COOKIE))
            query = urllib.parse.urlencode({"next": request.url.path})
            return RedirectResponse(f"/login?{query}", status_code=HTTPStatus.SEE_OTHER)
        if wants_page:
            return self._html("error.html", error=str(exc), status=status)
        headers = {"WWW-Authenticate": "Bearer"} if status == HTTPStatus.UNAUTHORIZED else None
        return JSONResponse({"error": str(exc)}, status_code=status, headers=headers)

    def _html(
        self, template: str, *, status: HTTPStatus = HTTPStatus.OK, **values: Any
    ) -> Response:
        body = self.templates.get_template(template).render(**values)
        return HTMLResponse(body, status_code=status)


class _BadRequest(FalajError):
    status = HTTPStatus.BAD_REQUEST


def _button(request: Request) -> str | None:
    """The rollout button a request presses, if it is one there is."""
    pressed = str(request.path_params["action"])
    return pressed if pressed in BUTTONS else None


def _safe_next(target: str | None) -> str:
    """Where to go after login: a path on this site only (never ``//host`` or a URL)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 0 < int(raw) <= views.MAX_ROWS:
        raise _BadRequest(
            f"expected limit to be a whole number from 1 to {views.MAX_ROWS}, got {raw!r}"
        )
    return int(raw)


def _event_type(request: Request) -> EventType | None:
    raw = request.query_params.get("type") or None
    if raw is None:
        return None
    try:
        return EventType(raw)
    except ValueError:
        raise _BadRequest(
            f"expected type to be an event type of the catalog ('falaj events schemas' lists "
            f"them, e.g. {EventType.MODEL_DEPLOYED}), got {raw!r}"
        ) from None


async def _body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise _BadRequest(f"expected a body of at most {MAX_FORM_BYTES} bytes")
    return body


async def _form(request: Request) -> dict[str, str]:
    if "csrf_form" not in request.scope:
        parsed = urllib.parse.parse_qs((await _body(request)).decode("utf-8", "replace"))
        request.scope["csrf_form"] = {key: values[0] for key, values in parsed.items()}
    form: dict[str, str] = request.scope["csrf_form"]
    return form


async def _form_field(request: Request, name: str) -> str | None:
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return (await _form(request)).get(name)
    return None


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await _body(request)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise _BadRequest("expected a JSON object as the body, got something else") from None
    if not isinstance(body, dict):
        raise _BadRequest(f"expected a JSON object as the body, got a {type(body).__name__}")
    return body


def create_app(control: ControlAPI) -> Starlette:
    page_routes = [
        Route(page.path, control.page, methods=["GET"], name=page.name) for page in PAGES
    ]
    return Starlette(
        routes=[
            *page_routes,
            Route("/models/{model}/{version:int}", control.version_page, methods=["GET"]),
            Route("/login", control.login_page, methods=["GET"]),
            Route("/login", control.counted("login", control.login), methods=["POST"]),
            Route("/logout", control.logout, methods=["POST"]),
            *[
                Route(f"/api/{API_PATHS.get(p.name, p.name)}", control.api, name=f"api-{p.name}")
                for p in PAGES
            ],
            Route("/api/models/{model}/{version:int}", control.api_version, methods=["GET"]),
            Route(
                "/api/rollouts/{model}/{action:str}",
                control.counted(_button, control.rollout),
                methods=["POST"],
            ),
            Route(
                "/api/dead-letters/{id:int}/replay",
                control.counted("replay", control.replay),
                methods=["POST"],
            ),
            Route(
                "/api/tokens", control.counted("token-issue", control.issue_token), methods=["POST"]
            ),
            Route(
                "/api/tokens/{subject}",
                control.counted("token-revoke", control.revoke_token),
                methods=["DELETE"],
            ),
            Route("/metrics", control.metrics_page, methods=["GET"]),
            Route("/static/{name}", control.static, methods=["GET"]),
            Route("/healthz", control.healthz, methods=["GET"]),
        ],
        exception_handlers={FalajError: control.on_error},
        middleware=[Middleware(SecurityHeaders)],
    )


def main() -> None:
    settings = Settings.from_env(os.environ)
    configure_logging("control", settings.log_level)
    ctx = Context.create(settings, actor="control")
    publisher = EventPublisher.from_context(ctx, timeout_s=5.0)
    uvicorn.run(
        create_app(ControlAPI(ctx, publisher, metrics=Metrics.for_process())),
        host=settings.host,
        port=settings.control_port,
        log_level=settings.log_level,
        access_log=False,
        **uvicorn_options(settings),
    )
