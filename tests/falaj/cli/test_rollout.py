"""``falaj rollout``: each step through the CLI, audited; status without a router."""

from __future__ import annotations

import getpass
import json

from typer.testing import CliRunner

from falaj.cli.main import app
from falaj.context import Context
from falaj.deployments import DeploymentStore, TrafficSplit
from tests.support.models import WEIGHTS_V1, WEIGHTS_V2, register

runner = CliRunner()


def rollout(ctx: Context, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["rollout", *args, "--home", str(ctx.settings.home)])
    return result.exit_code, result.output


def test_canary_resize_promote_rollback_and_shadow_from_the_cli(ctx: Context) -> None:
    for weights in (WEIGHTS_V1, WEIGHTS_V2, WEIGHTS_V1, WEIGHTS_V2):
        register(ctx, weights)
    with DeploymentStore(ctx) as store:
        store.set(TrafficSplit("fraud", stable_version=1))

    code, out = rollout(ctx, "canary", "fraud", "2", "--percent", "20", "--reason", "try v2")
    assert code == 0, out
    assert "stable version 1 -> stable version 1, canary version 2 at 20%" in out
    code, out = rollout(ctx, "canary", "fraud", "-p", "50", "--json")
    assert code == 0, out
    assert json.loads(out)["after"] == "stable version 1, canary version 2 at 50%"
    assert json.loads(out)["announced"] is None  # no platform runs here

    code, out = rollout(ctx, "promote", "fraud")
    assert (code, "-> stable version 2" in out) == (0, True), out
    code, out = rollout(ctx, "rollback", "fraud")
    assert code == 1 and "no canary to roll back (stable version 2)" in out

    code, out = rollout(ctx, "shadow", "fraud", "4")
    assert code == 0 and "shadow version 4" in out
    code, out = rollout(ctx, "shadow", "fraud", "--off")
    assert code == 0 and out.strip().endswith("stable version 2"), out
    code, out = rollout(ctx, "shadow", "fraud")
    assert code == 1 and "expected a version to shadow, or --off" in out

    code, out = rollout(ctx, "canary", "fraud", "9")
    assert code == 1 and "has no version 9" in out  # refused by the registry

    code, out = rollout(ctx, "status", "fraud", "--json")
    assert code == 0, out
    status = json.loads(out)
    assert status["split"]["stable_version"] == 2 and status["live"] is None
    # The loop's steps, from the audit log: the registrations, then each rollout step.
    steps = [(s["step"], s["version"]) for s in status["loop"]]
    assert steps[-7:] == [
        ("model.canary", "2"),
        ("model.canary", "2"),
        ("model.promoted", "2"),
        ("model.rolled_back (refused)", ""),
        ("model.shadow", "4"),
        ("model.shadow", "2"),
        ("model.canary (refused)", "9"),
    ]
    assert [s["step"] for s in status["loop"][:4]] == ["model.registered"] * 4
    assert status["loop"][-7]["why"] == "try v2"
    code, out = rollout(ctx, "status", "fraud")
    assert code == 0 and "no router answers here" in out
    assert "the loop (last" in out and "model.promoted" in out
    code, out = rollout(ctx, "status", "aml")
    assert code == 1 and "'aml' has no traffic split" in out

    entries = [e for e in ctx.audit.entries() if e["actor"].startswith("cli:")]
    assert [(e["action"], e["outcome"]) for e in entries] == [
        ("model.canary", "success"),
        ("model.canary", "success"),
        ("model.promoted", "success"),
        ("model.rolled_back", "refused"),
        ("model.shadow", "success"),
        ("model.shadow", "success"),
        ("model.canary", "refused"),
    ]
    assert {e["actor"] for e in entries} == {f"cli:{getpass.getuser()}"}  # who, by name
    assert entries[0]["details"]["reason"] == "try v2"
