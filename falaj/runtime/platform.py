"""``falaj up``: the same manifests a cluster applies, run as local processes.

| manifest                    | local process                                        |
|-----------------------------|------------------------------------------------------|
| Broker + Triggers           | ``python -m eventing.broker`` (SQLite-backed)         |
| Knative Service (function)  | its container command: ``functions-framework ...``    |
| ContainerSource             | its container command (the storage source)            |
| RabbitmqSource              | ``python -m eventing.rabbitmq_source`` (only with      |
|                             | ``FALAJ_RABBITMQ_URL`` set)                            |
| PingSource                  | ``python -m eventing.ping_source`` (the schedule)      |
| InferenceService            | ``python -m inference.router`` (split + revisions)    |
| Deployment (control API)    | its container command: ``python -m falaj.control``    |
| RayJob                      | a local Ray head; the launcher submits to its Jobs API |

Processes are started in dependency order and stopped in reverse, by PID.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from falaj.auth import Role, write_token_file
from falaj.context import Context
from falaj.manifests import CONTROL_DEPLOYMENT, load_topology
from falaj.runtime.processes import ManagedProcess, ReadyCheck, broker_argv, free_port, port_open
from falaj.runtime.ray_head import RayHeadConfig, issue_ray_token, ray_env, start_ray_head
from falaj.settings import ENV_PREFIX, PROJECT_ROOT, Settings
from falaj.tls import client_verify
from falaj.topology import SourceSpec, Topology
from falaj.topology_files import dump_endpoints, dump_topology

#: The container command of a Knative Service function (functions-framework's CLI).
FUNCTIONS_FRAMEWORK = "functions-framework"

#: Paths inside the container images, and where they live on one machine.
CONTAINER_LANDING = "/data/landing"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class LocalPlatform:
    """Starts and stops one local platform; its state lives in ``settings.home``."""

    settings: Settings
    #: Use this Ray head instead of starting one (tests share one per session).
    external_ray_address: str | None = None
    processes: list[ManagedProcess] = field(default_factory=list)
    user_tokens: dict[Role, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ctx = Context.create(self.settings, actor="falaj-up")
        self.paths = self.ctx.paths
        self.bin = Path(sys.executable).parent

    # -- lifecycle ---------------------------------------------------------

    def up(self, progress: Progress = _quiet) -> Settings:
        """Start everything; return the settings the components run with."""
        for directory in (self.paths.home, self.paths.landing, self.paths.run, self.paths.logs):
            directory.mkdir(parents=True, exist_ok=True)
        self._refuse_busy_ports()
        topology = load_topology(self.settings.manifests_dir)
        env = self._component_env()
        try:
            self._start_ray(progress, env)
            env = self._component_env()
            scheme = self.settings.scheme
            endpoints = {
                name: f"{scheme}://{self.settings.host}:{free_port()}" for name in topology.services
            }
            self._start_broker(topology, endpoints, env, progress)
            self._start_services(topology, endpoints, env, progress)
            self._start_sources(topology, env, progress)
            self._start_router(env, progress)
            self._start_control(topology, env, progress)
            self._write_state(endpoints)
        except BaseException:
            self.down()
            raise
        self.ctx.audit.record(
            "platform.up",
            actor="falaj-up",
            resource=str(self.paths.home),
            region=self.settings.region,
            details={"processes": [p.name for p in self.processes]},
        )
        return self.settings

    def down(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        state = self.paths.run / "platform.json"
        if state.exists():
            state.unlink()

    def alive(self) -> dict[str, bool]:
        return {process.name: process.alive() for process in self.processes}

    # -- parts ---------------------------------------------------------------

    def _refuse_busy_ports(self) -> None:
        from falaj.errors import RuntimeStartError

        wanted = {
            "broker": self.settings.broker_port,
            "router": self.settings.router_port,
            "control": self.settings.control_port,
        }
        if self.external_ray_address is None:
            wanted["ray dashboard"] = self.settings.ray_dashboard_port
        busy = [
            f"{name} port {port}"
            for name, port in wanted.items()
            if port_open(self.settings.host, port)
        ]
        if busy:
            raise RuntimeStartError(
                "already in use: "
                + ", ".join(busy)
                + "; stop what holds them ('falaj down') or choose other ports (FALAJ_BROKER_PORT, "
                "FALAJ_ROUTER_PORT, FALAJ_CONTROL_PORT, FALAJ_RAY_DASHBOARD_PORT)"
            )

    def _issue_tokens(self) -> Path:
        service_token = self.ctx.tokens.issue("falaj-services", Role.SERVICE)
        service_file = self.paths.keys / "service.token"
        write_token_file(service_file, service_token)
        for role in Role:
            if role is Role.SERVICE:
                continue
            token = self.ctx.tokens.issue(f"local-{role}", role)
            write_token_file(self.paths.keys / f"{role}.token", token)
            self.user_tokens[role] = token
        return service_file

    def _component_env(self) -> dict[str, str]:
        service_file = self.paths.keys / "service.token"
        if not service_file.exists():
            service_file = self._issue_tokens()
        # No component gets the AMQP URL (it holds a password) but the source that
        # needs it: a job's environment is shown on the Ray dashboard.
        settings = self.settings.model_copy(
            update={"token": None, "token_file": service_file, "rabbitmq_url": None}
        )
        env = ray_env(
            {k: v for k, v in os.environ.items() if not k.startswith("FALAJ_")},
            token_file=self.settings.ray_token_file,
        )
        env.update(settings.to_env())
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        ready: ReadyCheck,
        timeout_s: float = 60.0,
    ) -> ManagedProcess:
        process = ManagedProcess(
            name=name,
            argv=argv,
            env=env,
            log_path=self.paths.logs / f"{name}.log",
            cwd=PROJECT_ROOT,
        ).start()
        self.processes.append(process)
        process.wait_ready(ready, timeout_s=timeout_s)
        return process

    def _start_ray(self, progress: Progress, env: dict[str, str]) -> None:
        if self.external_ray_address is not None:
            self.settings = self.settings.model_copy(
                update={"ray_address": self.external_ray_address}
            )
            return
        progress(f"Ray head (dashboard and Jobs API on :{self.settings.ray_dashboard_port})")
        # Token authentication: nothing else on the machine may submit code to it.
        token_file = issue_ray_token(self.paths.keys / "ray.token")
        self.settings = self.settings.model_copy(update={"ray_token_file": token_file})
        head = start_ray_head(
            RayHeadConfig(
                host=self.settings.host,
                dashboard_port=self.settings.ray_dashboard_port,
                log_dir=self.paths.logs,
                token_file=token_file,
            ),
            env=env,
        )
        self.processes.append(head)

    def _start_broker(
        self,
        topology: Topology,
        endpoints: Mapping[str, str],
        env: Mapping[str, str],
        progress: Progress,
    ) -> None:
        progress(f"broker (CloudEvents ingress on :{self.settings.broker_port})")
        topology_file = self.paths.run / "topology.json"
        dump_topology(
            topology.brokers.values(),
            topology.triggers,
            topology_file,
            container_concurrency={
                name: service.container_concurrency for name, service in topology.services.items()
            },
        )
        endpoints_file = self.paths.run / "endpoints.json"
        dump_endpoints(endpoints, endpoints_file)
        self._spawn(
            "broker",
            broker_argv(topology_file, endpoints_file),
            env,
            ReadyCheck(self.settings.host, self.settings.broker_port, "/healthz", tls=self._tls),
        )

    def _start_services(
        self,
        topology: Topology,
        endpoints: Mapping[str, str],
        env: Mapping[str, str],
        progress: Progress,
    ) -> None:
        for name, service in topology.services.items():
            port = int(endpoints[name].rsplit(":", 1)[1])
            progress(f"function {name} (functions-framework on :{port})")
            argv = [
                *self._local_command(self._served(service.command)),
                f"--host={self.settings.host}",
                f"--port={port}",
            ]
            service_env = {**env, **self._manifest_env(service.env), "PORT": str(port)}
            self._spawn(f"function-{name}", argv, service_env, ReadyCheck(self.settings.host, port))

    def _start_sources(
        self, topology: Topology, env: Mapping[str, str], progress: Progress
    ) -> None:
        for source in self.sources_to_run(topology):
            name = source.name
            progress(f"source {name} ({source.summary or f'watching {self.paths.landing}'})")
            argv = [
                str(self.paths.landing) if arg == CONTAINER_LANDING else arg
                for arg in self._local_command(source.command)
            ]
            process = ManagedProcess(
                name=f"source-{name}",
                argv=argv,
                env={**env, **self._required_env(source)},
                log_path=self.paths.logs / f"source-{name}.log",
                cwd=PROJECT_ROOT,
            ).start()
            self.processes.append(process)

    def _required_env(self, source: SourceSpec) -> dict[str, str]:
        """The one setting a source needs beyond the common ones, as its variable."""
        if source.requires_setting is None:
            return {}
        value = getattr(self.settings, source.requires_setting)
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        return {ENV_PREFIX + source.requires_setting.upper(): text}

    def sources_to_run(self, topology: Topology) -> list[SourceSpec]:
        """The sources ``falaj up`` starts: those whose required setting is set.

        The embedded default needs no RabbitMQ: without ``FALAJ_RABBITMQ_URL``
        a RabbitmqSource is not started (README, "Sources").
        """
        return [
            source
            for source in topology.sources.values()
            if source.requires_setting is None
            or getattr(self.settings, source.requires_setting) is not None
        ]

    def _start_router(self, env: Mapping[str, str], progress: Progress) -> None:
        progress(f"inference router (KServe V1/V2 REST on :{self.settings.router_port})")
        self._spawn(
            "router",
            [sys.executable, "-m", "inference.router"],
            env,
            ReadyCheck(
                self.settings.host, self.settings.router_port, "/v2/health/live", tls=self._tls
            ),
        )

    def _start_control(
        self, topology: Topology, env: Mapping[str, str], progress: Progress
    ) -> None:
        """The control API's Deployment (control.yaml): its container command, on control_port."""
        control = topology.deployments.get(CONTROL_DEPLOYMENT)
        if control is None:
            progress(f"no control API: the manifests declare no Deployment {CONTROL_DEPLOYMENT!r}")
            return
        progress(f"control API and dashboard on {self.settings.control_url}")
        self._spawn(
            "control",
            self._local_command(control.command),
            {**env, **self._manifest_env(control.env)},
            ReadyCheck(
                self.settings.host, self.settings.control_port, control.ready_path, tls=self._tls
            ),
        )

    @property
    def _tls(self) -> ssl.SSLContext | bool | None:
        """What the readiness probes verify the listeners' certificate with; None: plain HTTP."""
        return None if self.settings.tls_cert_file is None else client_verify(self.settings)

    def _served(self, command: Sequence[str]) -> list[str]:
        """A function's container command; with TLS set, through ``function_server``."""
        if self.settings.tls_cert_file is None or not command or command[0] != FUNCTIONS_FRAMEWORK:
            return list(command)
        return ["python", "-m", "falaj.runtime.function_server", *command[1:]]

    def _local_command(self, command: Sequence[str]) -> list[str]:
        """A container command, run with this project's interpreter and tools."""
        if not command:
            return []
        head, *rest = command
        if head in {"python", "python3"}:
            return [sys.executable, *rest]
        local = self.bin / head
        return [str(local) if local.exists() else head, *rest]

    @staticmethod
    def _manifest_env(env: Mapping[str, str]) -> dict[str, str]:
        # FALAJ_* values in a manifest describe the cluster (its broker URL, its
        # mounted token file); on one machine the platform's settings replace them.
        return {k: v for k, v in env.items() if not k.startswith("FALAJ_")}

    def _write_state(self, endpoints: Mapping[str, str]) -> None:
        state = {
            "pid": os.getpid(),
            "home": str(self.paths.home),
            "broker": self.settings.broker_ingress,
            "router": self.settings.router_url,
            "control": self.settings.control_url,
            "ray": self.settings.ray_jobs_address,
            "functions": dict(endpoints),
            "processes": {p.name: p.pid for p in self.processes},
        }
        (self.paths.run / "platform.json").write_text(json.dumps(state, indent=1))
