"""``falaj status``: each process's PID and health probe, the summaries, the exit status.

The platform is a stand-in: ``platform.json`` names this test's own PID for the
processes that live, the PID of a process that ended for one that died, the
stand-in's URL for endpoints that answer and a closed port for one that does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from falaj.auth import Role
from falaj.cli.main import app
from falaj.context import Context
from falaj.deployments import DeploymentStore, TrafficSplit
from falaj.runtime.processes import free_port
from falaj.settings import Settings
from tests.falaj.cli.stand_in import StandIn, write_token
from tests.support.models import WEIGHTS_V1, WEIGHTS_V2, register

runner = CliRunner()


def _ended_pid() -> int:
    """The PID of a process that has ended (it is waited for, so nothing is left)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=30)
    return process.pid


@pytest.fixture
def home(tmp_path: Path, stand_in: StandIn) -> Path:
    """A platform home: two fraud versions split 90/10, a viewer token, a broker that answers."""
    home = tmp_path / ".falaj"
    ctx = Context.create(Settings(home=home), actor="test")
    register(ctx, WEIGHTS_V1)
    register(ctx, WEIGHTS_V2)
    with DeploymentStore(ctx) as store:
        store.set(TrafficSplit("fraud", stable_version=1, canary_version=2, canary_percent=10))
    write_token(home, Role.VIEWER)
    stand_in.route("GET", "/healthz", lambda _: (200, {"status": "ok"}))
    stand_in.route("GET", "/v2/health/live", lambda _: (200, {"live": True}))
    stand_in.route("GET", "/", lambda _: (401, {"error": "no token"}))  # a function: serving

    def letters(query: dict[str, list[str]]) -> tuple[int, object]:
        assert query["limit"] == ["1000"]
        return 200, [{"id": 1}, {"id": 2}]

    stand_in.route("GET", "/dead-letters", letters)
    return home


def _write_state(home: Path, state: dict[str, Any]) -> None:
    (home / "run").mkdir(parents=True, exist_ok=True)
    (home / "run" / "platform.json").write_text(json.dumps(state))


def _state(home: Path, url: str, **changes: Any) -> dict[str, Any]:
    me = os.getpid()
    return {
        "pid": me,
        "home": str(home),
        "broker": url,
        "router": url,
        "ray": url,
        "functions": {"ingest": url},
        "processes": {"broker": me, "function-ingest": me, "router": me, "source-storage": me},
        "control": url,
        **changes,
    }


def test_a_dead_process_and_a_silent_endpoint_make_status_fail(
    home: Path, stand_in: StandIn
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    state = _state(home, stand_in.url)
    state["functions"]["drift"] = closed
    state["processes"]["function-drift"] = _ended_pid()
    _write_state(home, state)

    result = runner.invoke(app, ["status", "--home", str(home), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["healthy"] is False
    shown = {c["name"]: c for c in report["components"]}
    drift = shown["function-drift"]
    assert (drift["alive"], drift["healthy"], drift["probe"]["status"]) == (False, False, None)
    assert drift["probe"]["url"] == closed + "/" and drift["probe"]["error"]
    assert report["alive"] == {
        "broker": True,
        "function-ingest": True,
        "router": True,
        "source-storage": True,
        "function-drift": False,
    }
    # The healthy ones: health routes answered 2xx, the function a 401 (it serves).
    assert shown["broker"]["probe"]["url"] == stand_in.url + "/healthz"
    assert shown["router"]["probe"]["url"] == stand_in.url + "/v2/health/live"
    assert shown["function-ingest"]["probe"]["status"] == 401
    assert shown["function-ingest"]["healthy"] is True
    assert shown["source-storage"]["url"] is None  # a PID only
    # Endpoints without a process of their own: an external Ray, the dashboard.
    assert (shown["ray-head"]["pid"], shown["ray-head"]["healthy"]) == (None, True)
    assert report["dashboard"] == stand_in.url
    assert shown["control"]["probe"]["url"] == stand_in.url + "/healthz"


def test_a_healthy_platform_at_a_glance(home: Path, stand_in: StandIn) -> None:
    _write_state(home, _state(home, stand_in.url))

    shown = runner.invoke(app, ["status", "--home", str(home), "--json"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)
    assert report["healthy"] is True and report["up"] == {"pid": os.getpid(), "alive": True}
    assert report["models"] == [
        {
            "model": "fraud",
            "split": "stable version 1, canary version 2 at 10%",
            "stable_version": 1,
            "canary_version": 2,
            "canary_percent": 10,
            "shadow_version": None,
        }
    ]
    assert report["dead_letters"] == 2
    assert report["audit"] == {"verified": True, "entries": 4, "error": None}
    # The broker was asked with the viewer's token; no token is ever printed.
    token = (home / "keys" / "viewer.token").read_text().strip()
    assert ("GET", "/dead-letters", f"Bearer {token}") in stand_in.requests
    assert token not in shown.stdout

    text = runner.invoke(app, ["status", "--home", str(home)], env={"COLUMNS": "200"})
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[0] == f"falaj up (pid {os.getpid()}) in {home}: healthy"
    assert lines[1] == f"dashboard: {stand_in.url}"
    assert "models: fraud: stable version 1, canary version 2 at 10%" in lines
    assert "dead letters: 2 ('falaj events dead' lists them)" in lines, lines[-4:]
    assert "audit log: 4 entries, hash chain verified" in lines


def test_a_stale_record_of_a_gone_falaj_up_is_not_healthy(home: Path, stand_in: StandIn) -> None:
    _write_state(home, _state(home, stand_in.url, pid=_ended_pid(), processes={}))
    result = runner.invoke(app, ["status", "--home", str(home)], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "gone" in result.stdout.splitlines()[0] and "NOT HEALTHY" in result.stdout
