"""The model catalog as people read it: each version, what it serves, and who moved it when.

One reading for the ``falaj models`` and ``falaj lineage`` commands and the
dashboard: the registry says what a version is, the deployment store what
traffic it takes (KServe's stable and canary, as registry aliases), and the
audit log its history.
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
