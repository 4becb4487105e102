"""`falaj up`, `falaj status` and `falaj down` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import SecretStr

from falaj.client import PlatformClient
from falaj.context import Context
from falaj.deployments import DeploymentStore, TrafficSplit, now_iso
from falaj.manifests import load_topology
from falaj.runtime.platform import LocalPlatform
from falaj.runtime.processes import ManagedProcess, ReadyCheck, free_port, port_open
from falaj.settings import PROJECT_ROOT, Settings
from tests.support.models import WEIGHTS_V1, register
from tests.support.ray_jobs import RayHead

FALAJ = str(Path(sys.executable).with_name("falaj"))


def test_every_function_service_runs_a_source_that_exists() -> None:
    topology = load_topology(Settings().manifests_dir)
    for service in topology.services.values():
        sources = [a.split("=", 1)[1] for a in service.command if a.startswith("--source=")]
        assert sources, f"{service.name} names no --source"
        assert (PROJECT_ROOT / sources[0]).is_file(), f"{service.name}: {sources[0]} is missing"


def test_the_rabbitmq_source_runs_only_with_its_server_and_alone_gets_its_url(
    tmp_path: Path,
) -> None:
    topology = load_topology(Settings().manifests_dir)
    embedded = LocalPlatform(Settings(home=tmp_path / "embedded"))
    # `make demo` needs no RabbitMQ: without its URL the RabbitmqSource does not run.
    assert [s.name for s in embedded.sources_to_run(topology)] == [
        "storage-source",
        "fraud-retraining",
    ]

    url = "amqp://falaj:s3cr3t@127.0.0.1:5672/%2F"
    platform = LocalPlatform(Settings(home=tmp_path / "queued", rabbitmq_url=SecretStr(url)))
    running = platform.sources_to_run(topology)
    assert [s.name for s in running] == ["storage-source", "records", "fraud-retraining"]
    # Every component's environment, and so every Ray job's, is free of the password;
    # the consumer alone is given the URL.
    assert "s3cr3t" not in json.dumps(platform._component_env())
    assert platform._required_env(running[1]) == {"FALAJ_RABBITMQ_URL": url}
    assert platform._required_env(running[2]) == {}


def test_the_control_api_runs_its_deployments_command_on_the_local_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest's container command, waited on at its probe's path; the port is local."""
    topology = load_topology(Settings().manifests_dir)
    platform = LocalPlatform(Settings(home=tmp_path, control_port=free_port()))
    spawned: list[tuple[str, list[str], dict[str, str], ReadyCheck]] = []
    monkeypatch.setattr(
        platform,
        "_spawn",
        lambda name, argv, env, ready: spawned.append((name, list(argv), dict(env), ready)),
    )

    platform._start_control(topology, {"FALAJ_HOME": str(tmp_path)}, lambda _: None)

    [(name, argv, env, ready)] = spawned
    assert (name, argv) == ("control", [sys.executable, "-m", "falaj.control"])
    # The cluster's FALAJ_HOST, FALAJ_CONTROL_PORT and FALAJ_HOME are not the platform's.
    assert env == {"FALAJ_HOME": str(tmp_path)}
    assert (ready.host, ready.port, ready.path) == (
        "127.0.0.1",
        platform.settings.control_port,
        "/healthz",
    )

    # Manifests without the control API's Deployment start none.
    spawned.clear()
    platform._start_control(replace(topology, deployments={}), {}, lambda _: None)
    assert spawned == []


def _served_version(home: Path) -> int:
    """A signed version in the registry, deployed at 100%, before the platform starts."""
    ctx = Context.create(Settings(home=home), actor="test")
    version = register(ctx, WEIGHTS_V1)
    with DeploymentStore(ctx) as store:
        store.set(TrafficSplit(model="fraud", stable_version=version, updated=now_iso()))
    return version


def platform_env(ray_head: RayHead, **settings: str) -> dict[str, str]:
    """A ``falaj up`` environment: free ports, the shared Ray head, and ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FALAJ_")}
    env.update(
        {
            "FALAJ_BROKER_PORT": str(free_port()),
            "FALAJ_ROUTER_PORT": str(free_port()),
            "FALAJ_CONTROL_PORT": str(free_port()),
        }
    )
    return {**env, **ray_head.env, **settings}


def start_up(tmp_path: Path, home: Path, env: dict[str, str]) -> ManagedProcess:
    """``falaj up`` in its own process; the caller stops it (by PID) and runs ``falaj down``."""
    return ManagedProcess(
        name="falaj-up",
        argv=[FALAJ, "up", "--home", str(home)],
        env=env,
        log_path=tmp_path / "up.log",
        cwd=tmp_path,
        grace_s=60.0,
    ).start()


@pytest.mark.ray
def test_up_predict_status_down(tmp_path: Path, ray_head: RayHead) -> None:
    env = platform_env(ray_head)
    ports = {name: int(env[name]) for name in ("FALAJ_BROKER_PORT", "FALAJ_ROUTER_PORT")}
    home = tmp_path / ".falaj"
    version = _served_version(home)
    up = start_up(tmp_path, home, env)
    state = home / "run" / "platform.json"
    try:
        up.wait_ready(state.exists, timeout_s=120.0)
        status = subprocess.run(
            [FALAJ, "status", "--home", str(home), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        report = json.loads(status.stdout)
        assert report["alive"] and all(report["alive"].values()), report["alive"]
        assert {"broker", "router", "function-ingest", "function-drift"} <= set(report["alive"])
        assert port_open("127.0.0.1", ports["FALAJ_BROKER_PORT"])
        tokens = sorted(p.name for p in (home / "keys").glob("*.token"))
        assert "platform-admin.token" in tokens and "viewer.token" in tokens

        with PlatformClient(
            broker_url=f"http://127.0.0.1:{ports['FALAJ_BROKER_PORT']}",
            router_url=f"http://127.0.0.1:{ports['FALAJ_ROUTER_PORT']}",
            token=(home / "keys" / "viewer.token").read_text(),
        ) as client:
            # The router loads (and verifies) the version after it is live.
            up.wait_ready(lambda: client.model_ready("fraud", {version}), timeout_s=60.0)
        features = {
            "amount": 912.5,
            "hour": 3,
            "distance_km": 840,
            "card_age_days": 12,
            "tx_count_24h": 9,
            "is_foreign": 1,
        }
        predicted = subprocess.run(
            [FALAJ, "predict", json.dumps(features), "--home", str(home), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert predicted.returncode == 0, predicted.stdout + predicted.stderr
        answer = json.loads(predicted.stdout)
        assert answer["version"] == version and answer["variant"] == "stable"
        [probability] = answer["probabilities"]
        assert 0.0 <= probability <= 1.0
        missing = subprocess.run(
            [FALAJ, "predict", '{"amount": 1}', "--home", str(home)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert missing.returncode == 1 and "missing features" in missing.stderr

        down = subprocess.run(
            [FALAJ, "down", "--home", str(home)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert down.returncode == 0, down.stdout + down.stderr
        assert up.popen is not None
        assert up.popen.wait(timeout=60) == 0
    finally:
        up.stop()
    assert not state.exists()
    for port in ports.values():
        assert not port_open("127.0.0.1", port)
    for pid in report["processes"].values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
