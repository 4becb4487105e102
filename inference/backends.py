"""The predictor processes behind the router, reconciled from the deployment store.

For every (model, version) in some traffic split there is one
``inference.server`` process on its own free ports, as KServe keeps one
predictor per model version of an InferenceService. A process is started when a
version enters a split and stopped (by PID) when it leaves every split. Each
backend's state is what its own readiness endpoint says: ready, refused (the
artifact failed verification; the reason comes from the 503 body), or failed
(the process died or never answered), or scaled to zero.

Scale to zero, as Knative does it for a revision: a ready backend that served
no request for ``idle_s`` is stopped and kept as ``scaled-to-zero``; the next
request for it calls ``activate``, which starts a fresh process, and the router
holds the request until it is ready (Knative's activator). A backend is
stopped only with no request in flight: ``acquire``/``release`` count them
under the pool's lock, the same lock the idle check holds.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import httpx

from falaj.deployments import DeploymentStore, TrafficSplit
from falaj.errors import RuntimeStartError
from falaj.logs import get_logger
from falaj.runtime.processes import ManagedProcess, ReadyCheck, free_port
from inference.server import STANDBY, server_args, server_argv


class BackendState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    REFUSED = "refused"
    FAILED = "failed"
    #: Stopped for want of traffic; the next request starts it again.
    SCALED_TO_ZERO = "scaled-to-zero"


@dataclass
class Backend:
    """One predictor process serving one model version."""

    model: str
    version: int
    process: ManagedProcess
    http_port: int
    grpc_port: int
    host: str
    #: https when the platform's listeners serve TLS.
    scheme: str = "http"
    state: BackendState = BackendState.STARTING
    reason: str | None = None
    stopped: threading.Event = field(default_factory=threading.Event)
    #: Set once the state is known (ready, refused, failed): what an activation waits for.
    settled: threading.Event = field(default_factory=threading.Event)
    #: Requests forwarded and not yet answered; changed under the pool's lock.
    in_flight: int = 0
    #: ``time.monotonic()`` of the last request (or of the start).
    last_used: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.http_port}"

    def status(self) -> dict[str, object]:
        status: dict[str, object] = {
            "state": str(self.state),
            "pid": self.process.pid,
            # Where the server listens (a standby's argv does not say it).
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
        }
        if self.reason:
            status["reason"] = self.reason
        return status


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    host: str
    #: The full environment of a predictor process (FALAJ_* from the settings).
    env: Mapping[str, str]
    log_dir: Path
    cwd: Path
    ready_timeout_s: float = 60.0
    stop_grace_s: float = 10.0
    #: How often the store's generation and the processes are checked.
    poll_interval_s: float = 0.25
    #: A ready backend unused for this long is stopped (scale to zero); 0: never.
    idle_s: float = 0.0
    #: Keep one pre-imported server waiting (``inference.server --standby``), so a
    #: start only loads its model: worth its memory where servers start often.
    prewarm: bool = False
    #: https when the predictors serve TLS; ``verify`` checks their certificate.
    scheme: str = "http"
    verify: ssl.SSLContext | bool = True
    #: The router's own token: predictors admit the readiness probe like any caller.
    token: str | None = field(default=None, repr=False)


class BackendPool:
    """Keeps the running predictors equal to the versions the splits name."""

    def __init__(self, config: PoolConfig, store: DeploymentStore) -> None:
        self.config = config
        self.store = store
        self._lock = threading.Lock()
        self._backends: dict[tuple[str, int], Backend] = {}
        self._splits: dict[str, TrafficSplit] = {}
        self._generation: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http = httpx.Client(
            timeout=2.0,
            verify=config.verify,
            headers={"Authorization": f"Bearer {config.token}"} if config.token else None,
        )
        #: The pre-warmed server the next start takes over (``PoolConfig.prewarm``).
        self._standby: ManagedProcess | None = None
        self._standbys = 0
        self.log = get_logger(component="router.backends")

    # -- what the router reads -------------------------------------------------------

    def split(self, model: str) -> TrafficSplit | None:
        with self._lock:
            return self._splits.get(model)

    def models(self) -> list[str]:
        with self._lock:
            return sorted(self._splits)

    def backend(self, model: str, version: int) -> Backend | None:
        with self._lock:
            return self._backends.get((model, version))

    def acquire(self, model: str, version: int) -> Backend | None:
        """The version's backend if it is ready, counted in flight until ``release``."""
        with self._lock:
            backend = self._backends.get((model, version))
            if backend is None or backend.state is not BackendState.READY:
                return None
            backend.in_flight += 1
            backend.last_used = time.monotonic()
            return backend

    def release(self, backend: Backend) -> None:
        with self._lock:
            backend.in_flight -= 1
            backend.last_used = time.monotonic()

    def activate(self, model: str, version: int) -> Backend | None:
        """Start a scaled-to-zero version again; its backend (starting or not), or None."""
        with self._lock:
            key = (model, version)
            backend = self._backends.get(key)
            if backend is None or backend.state is not BackendState.SCALED_TO_ZERO:
                return backend
            backend = self._start_backend(model, version)
            self._backends[key] = backend
        self.log.info("backend.activating", model=model, version=version, pid=backend.process.pid)
        self._replenish_standby()
        return backend

    def not_ready(self) -> dict[str, dict[str, object]]:
        """Every version in a split that cannot serve yet, with its state."""
        if self.store.generation() != self._generation:
            # The store changed since the last reconcile: until the watcher has
            # caught up, "nothing is starting" would be a vacuous "ready".
            return {"*": {"state": "reconciling"}}
        with self._lock:
            wanted = [(s.model, v) for s in self._splits.values() for v in s.versions]
            result: dict[str, dict[str, object]] = {}
            serving = (BackendState.READY, BackendState.SCALED_TO_ZERO)
            for key in wanted:
                backend = self._backends.get(key)
                if backend is None or backend.state not in serving:
                    absent: dict[str, object] = {"state": "absent"}
                    result[f"{key[0]}/{key[1]}"] = backend.status() if backend else absent
            return result

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._replenish_standby()  # first, so the first start takes it over
        self.reconcile()
        self._thread = threading.Thread(target=self._watch, name="backend-pool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.stop_grace_s + 5)
        with self._lock:
            backends = list(self._backends.values())
            self._backends.clear()
            standby, self._standby = self._standby, None
        for backend in backends:
            self._stop_backend(backend)
        if standby is not None:
            standby.stop()
        self._http.close()

    def _watch(self) -> None:
        # Event.wait is the poll interval and wakes at once on stop().
        while not self._stop.wait(self.config.poll_interval_s):
            try:
                if self.store.generation() != self._generation:
                    self.reconcile()
                self._check_alive()
                self._scale_idle_to_zero()
            except Exception as exc:  # the watcher must outlive one bad read
                self.log.error("reconcile.failed", error=str(exc), error_type=type(exc).__name__)

    def reconcile(self) -> None:
        """Start what the splits want and is not running; stop what no split wants."""
        generation = self.store.generation()
        splits = {s.model: s for s in self.store.all()}
        wanted = {(s.model, v) for s in splits.values() for v in s.running_versions}
        with self._lock:
            self._splits = splits
            self._generation = generation
            removed = [b for key, b in self._backends.items() if key not in wanted]
            for backend in removed:
                del self._backends[(backend.model, backend.version)]
            to_start = sorted(wanted - set(self._backends))
            for model, version in to_start:
                self._backends[(model, version)] = self._start_backend(model, version)
        if to_start:
            self._replenish_standby()
        for backend in removed:
            self.log.info("backend.stopping", model=backend.model, version=backend.version)
            self._stop_backend(backend)

    def _check_alive(self) -> None:
        with self._lock:
            backends = list(self._backends.values())
        for backend in backends:
            if backend.state is BackendState.READY and not backend.process.alive():
                backend.state = BackendState.FAILED
                backend.reason = (
                    f"predictor process {backend.process.pid} exited; "
                    f"its log: {backend.process.log_path}"
                )
                self.log.error("backend.died", model=backend.model, version=backend.version)

    def _scale_idle_to_zero(self) -> None:
        if self.config.idle_s <= 0:
            return
        now = time.monotonic()
        with self._lock:
            idle = [
                b
                for b in self._backends.values()
                if b.state is BackendState.READY
                and b.in_flight == 0
                and now - b.last_used >= self.config.idle_s
            ]
            for backend in idle:
                # Marked under the lock: from here acquire() skips it and the
                # next request activates a fresh process instead.
                backend.state = BackendState.SCALED_TO_ZERO
        for backend in idle:
            self.log.info(
                "backend.scaled-to-zero",
                model=backend.model,
                version=backend.version,
                idle_s=round(now - backend.last_used, 1),
            )
            self._stop_backend(backend)

    # -- one backend ---------------------------------------------------------------

    def _replenish_standby(self) -> None:
        """Keep one pre-warmed server waiting; spawned outside the lock requests take."""
        if not self.config.prewarm or self._stop.is_set():
            return
        with self._lock:
            if self._standby is not None:
                return
            self._standbys += 1
            number = self._standbys
        spawned = ManagedProcess(
            name=f"predictor-standby-{number}",
            argv=server_argv(STANDBY),
            env=self.config.env,
            log_path=self.config.log_dir / f"predictor-standby-{number}.log",
            cwd=self.config.cwd,
            grace_s=self.config.stop_grace_s,
            stdin_pipe=True,
        ).start()
        with self._lock:
            extra = self._standby is not None or self._stop.is_set()
            if not extra:
                self._standby = spawned
        if extra:  # another thread was first, or the pool stopped meanwhile
            spawned.stop()

    def _take_standby(self, args: list[str]) -> ManagedProcess | None:
        """The waiting standby, told to serve ``args``; None when there is none that can."""
        standby, self._standby = self._standby, None
        if standby is None:
            return None
        try:
            if standby.alive():
                standby.send_line(json.dumps(args))
                return standby
        except RuntimeStartError:
            pass
        standby.stop()  # it died waiting: reap it
        return None

    def _start_backend(self, model: str, version: int) -> Backend:
        """Start a server for the version (the standby, when one waits); under the lock.

        The caller replenishes the standby once the lock is released.
        """
        host = self.config.host
        http_port, grpc_port = free_port(host), free_port(host)
        args = server_args(model, version, http_port, grpc_port)
        process = self._take_standby(args)
        prewarmed = process is not None
        if process is None:
            process = ManagedProcess(
                name=f"predictor-{model}-{version}",
                argv=server_argv(*args),
                env=self.config.env,
                log_path=self.config.log_dir / f"predictor-{model}-{version}.log",
                cwd=self.config.cwd,
                grace_s=self.config.stop_grace_s,
            ).start()
        backend = Backend(
            model, version, process, http_port, grpc_port, host, scheme=self.config.scheme
        )
        self.log.info(
            "backend.starting",
            model=model,
            version=version,
            pid=process.pid,
            prewarmed=prewarmed,
            log=str(process.log_path),
        )
        threading.Thread(
            target=self._await_ready, args=(backend,), name=f"ready-{model}-{version}", daemon=True
        ).start()
        return backend

    def _await_ready(self, backend: Backend) -> None:
        """Probe the model's readiness: 200 ready, 503 refused (with why), else keep trying."""
        try:
            # Probed every 20 ms: a request held by an activation waits on this.
            backend.process.wait_ready(
                _ModelProbe(self, backend), timeout_s=self.config.ready_timeout_s, poll_s=0.02
            )
        except RuntimeStartError as exc:
            if not backend.stopped.is_set():
                backend.state, backend.reason = BackendState.FAILED, str(exc)
                self.log.error(
                    "backend.failed", model=backend.model, version=backend.version, error=str(exc)
                )
            return
        finally:
            backend.last_used = time.monotonic()  # idle time counts from ready
            backend.settled.set()
        if backend.state is BackendState.READY:
            self.log.info("backend.ready", model=backend.model, version=backend.version)
        elif backend.state is BackendState.REFUSED:
            self.log.error(
                "backend.refused",
                model=backend.model,
                version=backend.version,
                reason=backend.reason,
            )

    def _probe(self, backend: Backend) -> bool:
        """True once the backend's state is known."""
        try:
            response = self._http.get(f"{backend.url}/v2/models/{backend.model}/ready")
        except httpx.HTTPError:
            return False  # not listening yet: kserve serves only after load()
        if response.status_code == 200:
            backend.state = BackendState.READY
            return True
        if response.status_code == 503:
            try:
                reason = str(response.json().get("error"))
            except ValueError:
                reason = response.text[:500]
            backend.state, backend.reason = BackendState.REFUSED, reason
            return True
        return False

    def _stop_backend(self, backend: Backend) -> None:
        backend.stopped.set()
        backend.process.stop()


class _ModelProbe(ReadyCheck):
    """Done when the backend's state is known, or it was stopped meanwhile."""

    def __init__(self, pool: BackendPool, backend: Backend) -> None:
        super().__init__(backend.host, backend.http_port, f"/v2/models/{backend.model}/ready")
        self.pool, self.backend = pool, backend

    def __call__(self) -> bool:
        return self.pool._probe(self.backend) or self.backend.stopped.is_set()
