"""``inference.router`` as a test runs it: started as the platform starts it, stopped by PID
with every predictor process it started."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

import httpx

from falaj.runtime.processes import ManagedProcess, ReadyCheck, pid_alive
from falaj.settings import PROJECT_ROOT, Settings


def start_router_process(settings: Settings, log_path: Path) -> ManagedProcess:
    """The router on ``settings.router_port``, once it answers its liveness probe."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FALAJ_")}
    process = ManagedProcess(
        name="router",
        argv=[sys.executable, "-m", "inference.router"],
        env={**base, **settings.to_env()},
        log_path=log_path,
        cwd=PROJECT_ROOT,
        grace_s=20.0,
    ).start()
    try:
        process.wait_ready(ReadyCheck("127.0.0.1", settings.router_port, "/v2/health/live"))
    except BaseException:
        process.stop()
        raise
    return process


def predictor_pids(router_url: str, token: str, model: str = "fraud") -> set[int]:
    """The PIDs of the model's predictors the router shows now (none if it does not answer)."""
    with contextlib.suppress(httpx.HTTPError, KeyError):
        status = httpx.get(
            f"{router_url}/v2/models/{model}", headers={"Authorization": f"Bearer {token}"}
        ).json()["status"]
        return {int(s["pid"]) for s in status.values() if s.get("pid")}
    return set()


def kill_leftovers(pids: Iterable[int]) -> list[int]:
    """Kill the predictors a stopped router left running; which they were (none: it did its job)."""
    leftovers = [pid for pid in pids if pid_alive(pid)]
    for pid in leftovers:
        os.killpg(pid, signal.SIGKILL)
    return leftovers
