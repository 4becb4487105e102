"""`falaj audit export` (JSON Lines for a SIEM) and `falaj lineage` (where a version came from)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from falaj.cli.main import app
from falaj.context import Context
from falaj.deployments import DeploymentStore, TrafficSplit
from tests.support.models import WEIGHTS_V1, WEIGHTS_V2, register

runner = CliRunner()


def cli(ctx: Context, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--home", str(ctx.settings.home)])
    return result.exit_code, result.output


def test_export_writes_the_verified_chain_as_json_lines_and_filters(
    ctx: Context, tmp_path: Path
) -> None:
    register(ctx, WEIGHTS_V1)
    with DeploymentStore(ctx) as store:
        store.set(TrafficSplit("fraud", stable_version=1))
    register(ctx, WEIGHTS_V2)
    assert cli(ctx, "rollout", "canary", "fraud", "2", "--percent", "20")[0] == 0

    target = tmp_path / "siem.jsonl"
    code, out = cli(ctx, "audit", "export", "--output", str(target))
    assert code == 0, out
    exported = [json.loads(line) for line in target.read_text().splitlines()]
    assert exported == list(ctx.audit.entries())
    assert all("hash" in e and "prev_hash" in e for e in exported)
    assert f"exported {len(exported)} of {len(exported)} entries" in out

    code, out = cli(ctx, "audit", "export", "--action", "model.canary")
    assert code == 0, out
    [canary] = [json.loads(line) for line in out.splitlines()]
    assert canary["resource"] == "model/fraud/2"
    code, out = cli(ctx, "audit", "export", "--since", "2999-01-01")
    assert (code, out) == (0, "")
    code, out = cli(ctx, "audit", "export", "--since", "yesterday")
    assert code == 1 and "expected an ISO 8601 time" in out


def test_a_tampered_log_is_not_exported(ctx: Context) -> None:
    register(ctx, WEIGHTS_V1)
    path = ctx.paths.audit / "audit.jsonl"
    text = path.read_text()
    assert "model/fraud/1" in text
    path.write_text(text.replace("model/fraud/1", "model/fraud/9", 1))
    code, out = cli(ctx, "audit", "export")
    assert code == 1 and "audit log tampered, not exported" in out


def test_lineage_names_the_data_features_job_and_who_moved_the_version(ctx: Context) -> None:
    register(ctx, WEIGHTS_V1)
    with DeploymentStore(ctx) as store:
        store.set(TrafficSplit("fraud", stable_version=1))
    register(ctx, WEIGHTS_V2)
    assert cli(ctx, "rollout", "canary", "fraud", "2", "--reason", "retrained on drift")[0] == 0
    assert cli(ctx, "rollout", "promote", "fraud", "--reason", "canary no worse")[0] == 0

    code, out = cli(ctx, "lineage", "fraud", "2", "--json")
    assert code == 0, out
    record = json.loads(out)
    assert record["version"] == 2 and len(record["sha256"]) == 64
    assert record["lineage"]["training_job_id"] == "test"
    assert record["features"][0] == "amount"
    steps = [(h["action"], h["reason"]) for h in record["history"]]
    assert steps[0][0] == "model.registered"
    assert ("model.canary", "retrained on drift") in steps
    assert ("model.promoted", "canary no worse") in steps
    assert all(h["actor"] for h in record["history"])

    code, out = cli(ctx, "lineage", "fraud", "9")
    assert code == 1 and "has no version 9" in out
