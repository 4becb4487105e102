"""A local Ray head with the dashboard and the Jobs API, started and stopped by PID.

``ray start --block`` keeps one foreground process that owns the head's
children and tears them down when it is signalled, so the head stops with it
and no ``ray stop`` (which takes ~7 s and stops every Ray on the machine) is
needed.

With a token file the head runs Ray's token authentication (``RAY_AUTH_MODE=token``,
Ray 2.52 on): the dashboard, the Jobs API and the GCS refuse any caller without
the token, so nothing else on the machine can submit code to it. ``falaj up``
writes one (``<home>/keys/ray.token``); every platform process that talks to
Ray reads it through ``FALAJ_RAY_TOKEN_FILE``, and the jobs inherit it.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from falaj.runtime.processes import ManagedProcess, ReadyCheck, free_port

_AGENT_PORT_FLAGS = (
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
    "ray-client-server-port",
)


@dataclass(frozen=True)
class RayHeadConfig:
    host: str
    dashboard_port: int
    log_dir: Path
    num_cpus: int = 2
    # Ray's default GCS port is 6379, Redis's; pick a free one instead.
    gcs_port: int | None = None
    #: Ray's token authentication, with the token in this file; None: none.
    token_file: Path | None = None


#: Ray Train v2's controller polls its workers every 2 s by default, and a run
#: waits out two polls as it ends and a checkpoint report blocks on the next
#: one: 0.2 s takes about 2.5 s off every training run on this machine
#: (benchmarks/training.py). Set where a head starts and in every job's env.
RAY_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


def ray_env(
    base: dict[str, str] | None = None, *, token_file: Path | None = None
) -> dict[str, str]:
    """The environment of a Ray process (the head, a driver): auth, no usage reporting."""
    env = dict(os.environ if base is None else base)
    if token_file is None:
        # No ~/.ray/auth_token files where Ray runs without authentication.
        env.setdefault("RAY_AUTH_MODE", "disabled")
    else:
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    # No usage reporting from a machine with no network.
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(RAY_TRAIN_ENV)
    return env


def issue_ray_token(path: Path) -> Path:
    """Write a fresh token for a head's authentication, readable by its owner only."""
    from falaj.auth import write_token_file

    write_token_file(path, secrets.token_hex(32))
    return path


def ray_auth_headers(token_file: Path | None) -> dict[str, str]:
    """The header a client of the dashboard and Jobs API presents (none without a token)."""
    if token_file is None:
        return {}
    return {"Authorization": f"Bearer {token_file.read_text().strip()}"}


def start_ray_head(config: RayHeadConfig, env: dict[str, str] | None = None) -> ManagedProcess:
    ray_bin = Path(sys.executable).with_name("ray")
    gcs_port = config.gcs_port or free_port(config.host)
    temp_dir = _short_temp_dir(config.dashboard_port)
    argv = [
        str(ray_bin),
        "start",
        "--head",
        "--block",
        f"--node-ip-address={config.host}",
        f"--port={gcs_port}",
        f"--num-cpus={config.num_cpus}",
        "--include-dashboard=true",
        f"--dashboard-host={config.host}",
        f"--dashboard-port={config.dashboard_port}",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        # Ray's agents listen on fixed default ports (52365 and others): a second
        # Ray on the machine (a user's, a benchmark's) would leave this head
        # without a job agent, refusing every job. Free ports instead.
        *(f"--{flag}={free_port(config.host)}" for flag in _AGENT_PORT_FLAGS),
    ]
    process = ManagedProcess(
        name="ray-head",
        argv=argv,
        env=ray_env(env, token_file=config.token_file),
        log_path=config.log_dir / "ray-head.log",
        # `ray start --block` takes 30 s and more to act on SIGTERM; its children
        # (GCS, raylet, dashboard) share its process group and die with SIGKILL.
        grace_s=2.0,
        cleanup=(Path(temp_dir),),
    ).start()
    try:
        headers = ray_auth_headers(config.token_file)
        process.wait_ready(
            ReadyCheck(config.host, config.dashboard_port, "/api/version", headers=headers),
            timeout_s=120.0,
        )
        address = f"http://{config.host}:{config.dashboard_port}"
        _wait_for_job_agent(address, headers, timeout_s=120.0)
    except BaseException:
        process.stop()
        raise
    return process


def _wait_for_job_agent(address: str, headers: dict[str, str], timeout_s: float) -> None:
    """Until the head takes a job: one that does nothing is submitted.

    The dashboard answers before the head's job agent has registered, and a
    job submitted then is refused ("No available agent to submit job") once
    the dashboard's own 10 s wait runs out, as it does on a loaded 2-core
    machine. Accepted means the agent is there; the job ends by itself.
    """
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout_s
    client = JobSubmissionClient(address, headers=headers)
    while True:
        try:
            client.submit_job(entrypoint="true", metadata={"falaj": "ready-check"})
            return
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)  # the agent registers within seconds; ask again


def _short_temp_dir(port: int) -> str:
    # Ray's socket paths must stay under 107 bytes, so never nest it in a deep tmp dir.
    return f"/tmp/ray-falaj-{os.getuid()}-{port}"
