"""What the end-to-end tests share: one run of the demo, whose platform state they all read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from falaj.runtime.processes import free_port
from tests.support.ray_jobs import RayHead


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory, ray_head: RayHead) -> dict[str, object]:
    """`falaj demo` as a user runs it, in a temp folder; its report, ports, home and output."""
    workdir = tmp_path_factory.mktemp("demo")
    ports = {
        "FALAJ_BROKER_PORT": free_port(),
        "FALAJ_ROUTER_PORT": free_port(),
        "FALAJ_GRPC_PORT": free_port(),
        "FALAJ_CONTROL_PORT": free_port(),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("FALAJ_")}
    env.update({k: str(v) for k, v in ports.items()})
    env.update(ray_head.env)
    env["COLUMNS"] = "200"
    falaj = Path(sys.executable).with_name("falaj")
    completed = subprocess.run(
        [str(falaj), "demo", "--rows", "3000", "--json"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    report = json.loads(completed.stdout[completed.stdout.index("{\n") :])
    return {
        "report": report,
        "ports": ports,
        "home": workdir / ".falaj" / "demo",
        "output": completed.stdout + completed.stderr,
    }
