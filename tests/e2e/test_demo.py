"""The demo story end to end: `falaj demo` as a user runs it, in a temp folder."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from falaj.runtime.demo import START_PREFIX, STEPS
from falaj.runtime.processes import port_open

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

BAD_ROWS = 12  # DemoConfig.bad_rows


def test_two_versions_were_trained_and_registered(demo_run: dict) -> None:
    versions = demo_run["report"]["versions"]
    assert [v["version"] for v in versions] == [1, 2]
    for version in versions:
        assert version["metrics"]["auc"] > 0.8
        assert len(version["digest"]) == 64


def test_version_two_is_a_ten_percent_canary(demo_run: dict) -> None:
    report = demo_run["report"]
    assert report["split"] == {
        "model": "fraud",
        "stable_version": 1,
        "canary_version": 2,
        "canary_percent": 10,
        "shadow_version": None,
        "action": "deploy",
        "reason": "a new version was registered",
    }
    observed = report["observed_split"]
    total = sum(observed.values())
    canary = observed.get("v2 (canary)", 0)
    # 600 requests at p=0.1: mean 60, sd 7.3; 4 sd either side.
    assert 30 <= canary <= 90, observed
    assert canary + observed.get("v1 (stable)", 0) == total


def test_drift_named_the_shifted_features(demo_run: dict) -> None:
    drift = demo_run["report"]["drift"]
    assert drift["version"] == 1
    assert {"amount", "distance_km"} & set(drift["drifted_features"])
    # Each drifted feature is named by at least one statistic past its threshold.
    assert {f["feature"] for f in drift["findings"]} == set(drift["drifted_features"])
    assert {f["statistic"] for f in drift["findings"]} <= {
        "psi",
        "ks",
        "wasserstein",
        "chi_square",
        "jensen_shannon",
    }


def test_the_canary_was_promoted_or_rolled_back_on_its_outcomes(demo_run: dict) -> None:
    report = demo_run["report"]
    verdict = report["verdict"]
    assert verdict["action"] in ("promote", "rollback")
    assert verdict["reason"].startswith("automatic: ")
    assert "accuracy" in verdict["reason"]
    accuracy = report["canary_accuracy"]
    assert accuracy["v2 (canary)"]["count"] >= 30 and accuracy["v1 (stable)"]["count"] >= 30
    if verdict["action"] == "promote":
        assert (verdict["stable_version"], verdict["canary_version"]) == (2, None)
        assert report["audit_actions"]["model.promoted"] == 1
    else:
        assert (verdict["stable_version"], verdict["canary_version"]) == (1, None)
        assert report["audit_actions"]["model.rolled_back"] == 1


def test_bad_rows_were_quarantined_with_reasons(demo_run: dict) -> None:
    report = demo_run["report"]
    first = report["ingested"][0]
    assert first["rows_quarantined"] == BAD_ROWS
    assert first["rows_ingested"] == first["rows_total"] - BAD_ROWS
    assert len(report["quarantine"]) == BAD_ROWS
    assert all(row["reasons"] for row in report["quarantine"])


def test_every_lifecycle_step_was_audited_and_the_chain_verifies(demo_run: dict) -> None:
    report = demo_run["report"]
    assert report["audit_verified"] is True
    actions = report["audit_actions"]
    # The lifecycle, as far as the demo's story goes: ingest (with its
    # quarantined rows counted in the entry), train, register, sign, deploy,
    # canary, drift; promote or rollback is asserted with the verdict above.
    # Refusals (policy, login, reject) have a test per boundary of their own.
    for action in (
        "data.ingested",
        "training.launched",
        "training.completed",
        "model.registered",
        "model.signed",
        "model.deployed",
        "model.canary",
        "drift.detected",
    ):
        assert actions.get(action, 0) >= 1, actions


def test_nothing_is_left_running(demo_run: dict) -> None:
    for port in demo_run["ports"].values():
        assert not port_open("127.0.0.1", int(port))
    assert not (demo_run["home"] / "run" / "platform.json").exists()


def _secrets(keys: Path) -> dict[str, bytes]:
    """Every secret the demo's platform held, in each form it could leak in."""
    found: dict[str, bytes] = {}
    for path in sorted(keys.iterdir()):
        raw = path.read_bytes()
        if path.suffix == ".token":
            found[path.name] = raw.strip()
        elif path.suffix == ".pem" and b"PRIVATE" in raw:
            body = b"".join(line for line in raw.splitlines() if not line.startswith(b"-----"))
            found[path.name] = body[20:80]  # a stretch of the key's base64 no other text holds
        elif path.suffix == ".bin":
            found[path.name] = raw
            found[path.name + " (hex)"] = raw.hex().encode()
            found[path.name + " (base64)"] = base64.b64encode(raw).rstrip(b"=")
        elif path.suffix == ".env":
            for line in raw.splitlines():
                if b"=" in line:
                    found[f"{path.name}:{line.split(b'=')[0].decode()}"] = line.split(b"=", 1)[1]
    return found


def test_no_secret_reaches_a_log_an_event_the_audit_log_or_the_output(demo_run: dict) -> None:
    home: Path = demo_run["home"]
    secrets = _secrets(home / "keys")
    assert any(name.endswith(".token") for name in secrets), sorted(secrets)
    assert any(name.startswith("artifact-kek.bin") for name in secrets), sorted(secrets)
    places = {"demo output": demo_run["output"].encode()}
    for path in home.rglob("*"):
        # The keys folder holds them by design; everything else is logs, events
        # (the broker's store), the audit log, state, models and data.
        if path.is_file() and "keys" not in path.relative_to(home).parts:
            places[str(path.relative_to(home))] = path.read_bytes()
    assert len(places) > 20, sorted(places)
    leaks = [
        f"{name} in {where}"
        for name, secret in secrets.items()
        for where, content in places.items()
        if secret and secret in content
    ]
    assert leaks == []


def test_the_progress_bar_counts_every_step_the_demo_takes(demo_run: dict) -> None:
    """``falaj demo``'s bar is sized by ``STEPS``: the story must take exactly that many."""
    logged = [
        line.split("s ", 1)[1]
        for line in demo_run["output"].splitlines()
        if re.match(r"^\s*\d+\.\ds \S", line)
    ]
    assert logged[0].startswith(START_PREFIX)
    story = [step for step in logged if not step.startswith(START_PREFIX)]
    assert len(story) == STEPS, story
    assert story[-1] == "stop the platform"
