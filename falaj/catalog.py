"""The model catalog as people read it: each version, what it serves, and who moved it when.

One reading for the ``falaj models``, ``falaj lineage`` and ``falaj rollout
status`` commands and the dashboard: the registry says what a version is, the
deployment store what traffic it takes (KServe's stable and canary, as
registry aliases), and the audit log its history and the model's way round the
loop.
"""

from __future__ import annotations

from typing import Any

from falaj.audit import AuditLog
from falaj.deployments import Alias, TrafficSplit

#: Audit actions that say who moved a version through its life.
VERSION_STEPS = (
    "model.registered",
    "model.signed",
    "model.deployed",
    "model.canary",
    "model.promoted",
    "model.rolled_back",
    "model.shadow",
    "model.refused",
)


def serving_role(split: TrafficSplit | None, version: int) -> str:
    """What a version is to traffic: its alias and its share (``production (90%)``), or ''."""
    if split is None:
        return ""
    shares = {Alias.PRODUCTION: 100 - split.canary_percent, Alias.CANARY: split.canary_percent}
    for alias, named in split.aliases.items():
        if named == version:
            return f"{alias} ({shares[alias]}%)"
    return ""


def aliases_of(split: TrafficSplit | None, version: int) -> list[str]:
    """The registry aliases that name ``version``: production, canary, or none."""
    if split is None:
        return []
    return [str(alias) for alias, named in split.aliases.items() if named == version]


def version_history(audit: AuditLog, model: str, version: int) -> list[dict[str, Any]]:
    """Every lifecycle step of one version in the audit log, oldest first."""
    resource = f"model/{model}/{version}"
    return [
        {
            "time": entry["time"],
            "action": entry["action"],
            "outcome": entry["outcome"],
            "actor": entry["actor"],
            "role": entry["role"],
            "reason": (entry.get("details") or {}).get("reason"),
        }
        for entry in audit.entries()
        if entry["resource"] == resource and entry["action"] in VERSION_STEPS
    ]


#: The audit actions that make up the closed loop, and what each says about itself.
LOOP_ACTIONS = (
    "drift.detected",
    "training.launched",
    "training.completed",
    "training.failed",
    "model.registered",
    "model.deployed",
    "model.canary",
    "model.promoted",
    "model.rolled_back",
    "model.shadow",
)


def loop_steps(audit: AuditLog, model: str, *, last: int = 12) -> list[dict[str, str]]:
    """The model's last steps round the loop, from the audit log: drift to promotion."""
    prefix = f"model/{model}"
    steps = [
        entry
        for entry in audit.entries()
        if entry["action"] in LOOP_ACTIONS
        and (entry["resource"] == prefix or str(entry["resource"]).startswith(prefix + "/"))
    ][-last:]
    return [
        {
            "time": str(entry["time"]),
            "step": str(entry["action"])
            + ("" if entry.get("outcome", "success") == "success" else f" ({entry['outcome']})"),
            "version": str(entry["resource"])[len(prefix) + 1 :],
            "by": str(entry["actor"]),
            "why": _why(entry),
        }
        for entry in steps
    ]


def _why(entry: dict[str, Any]) -> str:
    details: dict[str, Any] = entry.get("details") or {}
    if entry["action"] == "drift.detected":
        return "drifted: " + ", ".join(details.get("drifted_features", []))
    if entry["action"] == "training.launched":
        return f"reason {details.get('reason')}, job {details.get('job_id')}"
    if entry["action"] == "training.completed":
        metrics = details.get("metrics", {})
        return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))
    return str(details.get("reason") or details.get("error") or "")
