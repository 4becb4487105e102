"""``falaj status``: what runs, where, and whether it is healthy, at a glance.

It reads ``<home>/run/platform.json`` (written by ``falaj up``) and, for every
process there, checks that its PID lives and probes its URL: the broker's
``/healthz``, the router's ``/v2/health/live`` and the control API's
``/healthz`` must answer 2xx; a function and the Ray dashboard must answer
HTTP at all (they have no health route of their own, and a 401 still says
"serving").
Probes run side by side with a short timeout, so a hung process costs seconds,
not minutes; https URLs are verified with the platform's CA
(``falaj.tls.client_verify``).

Then one line each where it is cheap: the models' traffic splits, the
broker's dead letters, the audit log's hash chain. The exit status is 1 when
a process or a probe is down; the summaries only inform.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from falaj.auth import Role
from falaj.cli.options import (
    HomeOption,
    JsonOption,
    console,
    emit_json,
    fail,
    platform_state,
    settings_for,
    user_token,
)
from falaj.context import Paths
from falaj.errors import FalajError
from falaj.runtime.processes import pid_alive
from falaj.settings import Settings
from falaj.tls import client_verify

#: Seconds a probe may take: a healthy local process answers in milliseconds.
PROBE_TIMEOUT_S = 2.0
#: Dead letters counted at most (the broker's page limit).
DEAD_LETTER_LIMIT = 1000


@dataclass(frozen=True)
class Endpoint:
    url: str
    #: The path probed.
    path: str
    #: True: only a 2xx is healthy (a health route); False: any answer under 500 is.
    strict: bool


@dataclass(frozen=True)
class Probe:
    url: str
    ok: bool
    status: int | None
    error: str | None
    ms: float


@dataclass(frozen=True)
class Component:
    name: str
    pid: int | None
    #: Whether its PID lives; None for an endpoint this platform did not start (an external Ray).
    alive: bool | None
    url: str | None
    probe: Probe | None

    @property
    def healthy(self) -> bool:
        return self.alive is not False and (self.probe is None or self.probe.ok)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


def endpoints(state: dict[str, Any]) -> dict[str, Endpoint]:
    """Each component's URL, by the name its process has in ``processes``."""
    found: dict[str, Endpoint] = {}
    if state.get("broker"):
        found["broker"] = Endpoint(state["broker"], "/healthz", strict=True)
    if state.get("router"):
        found["router"] = Endpoint(state["router"], "/v2/health/live", strict=True)
    if state.get("ray"):
        found["ray-head"] = Endpoint(state["ray"], "/api/version", strict=False)
    for name, url in (state.get("functions") or {}).items():
        found[f"function-{name}"] = Endpoint(url, "/", strict=False)
    control = dashboard_url(state)
    if control is not None:
        found["control"] = Endpoint(control, "/healthz", strict=True)
    return found


def dashboard_url(state: dict[str, Any]) -> str | None:
    """The control API's dashboard, when this platform runs one."""
    control = state.get("control")
    if isinstance(control, dict):
        control = control.get("url")
    return control if isinstance(control, str) and control else None


def probe(endpoint: Endpoint, http: httpx.Client) -> Probe:
    url = endpoint.url.rstrip("/") + endpoint.path
    started = time.perf_counter()
    try:
        response = http.get(url)
    except httpx.HTTPError as exc:
        elapsed = 1000 * (time.perf_counter() - started)
        return Probe(url, False, None, str(exc) or type(exc).__name__, elapsed)
    elapsed = 1000 * (time.perf_counter() - started)
    ok = response.is_success if endpoint.strict else response.status_code < 500
    return Probe(url, ok, response.status_code, None, elapsed)


def components(state: dict[str, Any], http: httpx.Client) -> list[Component]:
    """Every process ``falaj up`` started, then every endpoint it did not (an external Ray)."""
    processes: dict[str, int] = {name: int(pid) for name, pid in state["processes"].items()}
    urls = endpoints(state)
    names = [*processes, *(name for name in urls if name not in processes)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        probes = {name: pool.submit(probe, urls[name], http) for name in names if name in urls}
        return [
            Component(
                name=name,
                pid=processes.get(name),
                alive=pid_alive(processes[name]) if name in processes else None,
                url=urls[name].url if name in urls else None,
                probe=probes[name].result() if name in probes else None,
            )
            for name in names
        ]


# -- the one-line summaries ---------------------------------------------------------


def model_splits(settings: Settings) -> list[dict[str, Any]] | str:
    """Each deployed model's split; the reason as text when the store cannot be read."""
    from falaj.context import Context
    from falaj.deployments import DeploymentStore
    from falaj.rollouts import describe_split

    try:
        with DeploymentStore(Context.create(settings, actor="cli")) as store:
            splits = store.all()
    except (FalajError, OSError) as exc:
        return f"cannot read the deployments: {exc}"
    return [
        {"model": s.model, "split": describe_split(s), **s.traffic()}
        for s in sorted(splits, key=lambda s: s.model)
    ]


def dead_letters(settings: Settings, broker: str, http: httpx.Client) -> int | str:
    """How many events the broker could not deliver; the reason as text when it cannot say."""
    try:
        token = user_token(Paths(settings.resolved_home), Role.VIEWER)
        response = http.get(
            f"{broker.rstrip('/')}/dead-letters",
            params={"limit": DEAD_LETTER_LIMIT},
            headers={"Authorization": f"Bearer {token}"},
        )
    except (FalajError, httpx.HTTPError) as exc:
        return f"the broker did not answer: {exc}"
    if response.status_code != 200:
        return f"the broker answered HTTP {response.status_code}"
    return len(response.json())


def audit_chain(settings: Settings) -> dict[str, Any]:
    from falaj.audit import AuditLog
    from falaj.errors import AuditTampered

    try:
        report = AuditLog(Paths(settings.resolved_home).audit).verify()
    except AuditTampered as exc:
        return {"verified": False, "entries": None, "error": str(exc)}
    return {"verified": True, "entries": report.entries, "error": None}


# -- the command ---------------------------------------------------------------------


def status(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """What runs, where, and whether it is healthy; exit 1 when anything is down."""
    settings = settings_for(home)
    state = platform_state(settings.resolved_home)
    try:
        verify = client_verify(settings)
    except FalajError as exc:
        raise fail(str(exc), hint="point FALAJ_TLS_CA_FILE at the platform's CA file") from None
    up_pid = int(state.get("pid", 0))
    up_alive = up_pid > 0 and pid_alive(up_pid)
    # One client for every probe: one TLS context, and each probe timed alone.
    with httpx.Client(timeout=PROBE_TIMEOUT_S, verify=verify) as http:
        found = components(state, http)
        letters = dead_letters(settings, str(state.get("broker", "")), http)
    healthy = up_alive and all(c.healthy for c in found)
    record = {
        **state,
        "healthy": healthy,
        "up": {"pid": up_pid, "alive": up_alive},
        "dashboard": dashboard_url(state),
        # name -> PID lives, for scripts written against the first 'falaj status --json'
        "alive": {c.name: bool(c.alive) for c in found if c.pid is not None},
        "components": [c.to_json() for c in found],
        "models": model_splits(settings),
        "dead_letters": letters,
        "audit": audit_chain(settings),
    }
    if as_json:
        emit_json(record)
    else:
        _print(record, found)
    if not healthy:
        raise typer.Exit(1)


def _print(record: dict[str, Any], found: list[Component]) -> None:
    up = record["up"]
    verdict = "[green]healthy[/green]" if record["healthy"] else "[red]NOT HEALTHY[/red]"
    console.print(
        f"falaj up (pid {up['pid']}{'' if up['alive'] else ', [red]gone[/red]'}) in "
        f"{escape(str(record.get('home', '')))}: {verdict}"
    )
    if record["dashboard"]:
        console.print(f"dashboard: {escape(record['dashboard'])}")
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    for column in ("", "component", "pid", "url", "probe"):
        table.add_column(column)
    for c in found:
        mark = "[green]up[/green]" if c.healthy else "[red]down[/red]"
        table.add_row(
            mark,
            c.name,
            "" if c.pid is None else str(c.pid) + ("" if c.alive else " (gone)"),
            escape(c.url or ""),
            escape(_probe_text(c.probe)),
        )
    console.print(table)
    models = record["models"]
    if isinstance(models, str):
        console.print(f"models: {escape(models)}")
    else:
        shown = "; ".join(f"{m['model']}: {m['split']}" for m in models)
        console.print(f"models: {escape(shown) or 'none deployed'}")
    letters = record["dead_letters"]
    if isinstance(letters, int):
        more = " or more" if letters >= DEAD_LETTER_LIMIT else ""
        see = " ('falaj events dead' lists them)" if letters else ""
        console.print(f"dead letters: {letters}{more}{see}")
    else:
        console.print(f"dead letters: unknown, {escape(letters)}")
    audit = record["audit"]
    if audit["verified"]:
        console.print(f"audit log: {audit['entries']} entries, hash chain verified")
    else:
        console.print(f"audit log: [red]hash chain BROKEN[/red]: {escape(audit['error'])}")


def _probe_text(p: Probe | None) -> str:
    if p is None:
        return "no URL (PID only)"
    path = "/" + p.url.split("/", 3)[3] if p.url.count("/") >= 3 else p.url
    if p.status is None:
        return f"{path} no answer: {p.error}"
    return f"{path} {p.status} ({p.ms:.0f} ms)"
