"""What each page of the dashboard shows, as plain data (the ``/api`` JSON is exactly this).

Each view reads the platform's own stores the way its command does (``falaj
models``, ``falaj rollout status``, ``falaj drift status``, ``falaj train
status``, ``falaj audit verify``), and asks the broker and the router over HTTP
with the caller's own token, so the broker and the router decide for
themselves what the caller may see, as they do for the CLI. Reading creates
nothing: a store that does not exist yet is shown as empty.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from typing import Any

from falaj.audit import AuditLog
from falaj.auth import Action
from falaj.catalog import aliases_of, loop_steps, serving_role, version_history
from falaj.client import PlatformClient
from falaj.context import Context
from falaj.deployments import DB_FILE as DEPLOYMENTS_DB
from falaj.deployments import TrafficSplit, open_traffic_store
from falaj.errors import AuditTampered, FalajError, PlatformRequestError
from falaj.events import EventType
from falaj.quarantine import REASON_SUFFIX, quarantined_rows, refused_files
from falaj.registry import ModelRegistry
from falaj.runtime.processes import pid_alive
from falaj.training_runs import DB_FILE as TRAINING_DB
from falaj.training_runs import TrainingJobs

#: The control API's ServiceAccount on a cluster (manifests/base/control.yaml).
SERVICE_ACCOUNT = "control"
#: How long the dashboard waits for the broker or the router before showing what it has.
UPSTREAM_TIMEOUT_S = 5.0
#: Rows shown per table; the API takes ``limit`` up to this.
MAX_ROWS = 500
#: The most events one read asks the broker for (its own limit).
MAX_EVENTS = 1000


def _client(ctx: Context, token: str) -> PlatformClient:
    return PlatformClient.from_settings(ctx.settings, token=token, timeout_s=UPSTREAM_TIMEOUT_S)


# -- models ----------------------------------------------------------------------------------


def _splits(ctx: Context, models: list[str]) -> dict[str, TrafficSplit]:
    if (
        ctx.settings.serving_backend != "kserve"
        and not (ctx.paths.serving / DEPLOYMENTS_DB).exists()
    ):
        return {}
    store = open_traffic_store(ctx, service_account=SERVICE_ACCOUNT)
    try:
        return {model: split for model in models if (split := store.get(model)) is not None}
    finally:
        store.close()


def models(ctx: Context) -> dict[str, Any]:
    """Every model: its versions (metrics, lineage, what they serve) and its traffic split."""
    registry = ModelRegistry(ctx)
    names = registry.models()
    splits = _splits(ctx, names)
    shown = []
    for name in names:
        split = splits.get(name)
        shown.append(
            {
                "model": name,
                "split": None if split is None else {**split.traffic(), "updated": split.updated},
                "versions": [
                    {
                        "version": v.version,
                        "created": v.created,
                        "region": v.region,
                        "digest": v.digest,
                        "metrics": dict(v.metrics),
                        "serving": serving_role(split, v.version),
                        "aliases": aliases_of(split, v.version),
                        "lineage": dict(v.lineage),
                    }
                    for v in registry.versions(name)
                ],
            }
        )
    return {"models": shown}


def version(ctx: Context, model: str, number: int) -> dict[str, Any]:
    """One version: where it came from (lineage) and who moved it when (the audit log)."""
    found = ModelRegistry(ctx).get(model, number)
    split = _splits(ctx, [model]).get(model)
    return {
        **found.to_json(),
        "serving": serving_role(split, number),
        "aliases": aliases_of(split, number),
        "history": version_history(ctx.audit, model, number),
    }


# -- traffic ---------------------------------------------------------------------------------


def rollouts(ctx: Context, token: str) -> dict[str, Any]:
    """Each deployed model's split and the router's live per-variant metrics and A/B tests."""
    names = ModelRegistry(ctx).models()
    splits = _splits(ctx, names)
    shown = []
    with _client(ctx, token) as client:
        for name, split in splits.items():
            live: dict[str, Any] | None = None
            problem = None
            try:
                live = client.ab_report(name)
            except FalajError as exc:
                problem = str(exc)
            shown.append(
                {
                    "model": name,
                    "split": {**split.traffic(), "updated": split.updated},
                    "live": live,
                    "live_error": problem,
                    "loop": loop_steps(ctx.audit, name),
                }
            )
    return {"rollouts": shown}


# -- drift -----------------------------------------------------------------------------------


def drift(ctx: Context, *, last: int = 50) -> dict[str, Any]:
    """Each model version's scored windows, oldest first, and the thresholds that decide drift."""
    from falaj.drift_history import DB_FILE as DRIFT_DB
    from falaj.drift_history import DriftHistory

    shown: list[dict[str, Any]] = []
    if (ctx.paths.drift / DRIFT_DB).exists():  # reading must not create the drift function's state
        history = DriftHistory(ctx.paths.drift)
        try:
            for name in ModelRegistry(ctx).models():
                for number in history.versions(name):
                    windows = history.windows(name, number, last=last)
                    shown.append(
                        {
                            "model": name,
                            "version": number,
                            "windows": [w.to_json() for w in windows],
                        }
                    )
        finally:
            history.close()
    return {"thresholds": dict(ctx.settings.drift_thresholds), "series": shown}


# -- events ----------------------------------------------------------------------------------


def events(
    ctx: Context, token: str, *, limit: int = 100, event_type: EventType | None = None
) -> dict[str, Any]:
    """The broker's newest events and its dead letters (each with its reason).

    A broker that does not answer is shown as such (``error``), not as a failed page.
    """
    try:
        with _client(ctx, token) as client:
            recent = client.events(event_type, limit=limit)
            dead = client.dead_letters(limit=limit)
    except PlatformRequestError as exc:
        return {
            "events": [],
            "by_type": {},
            "dead_letters": [],
            "types": [str(t) for t in EventType],
            "error": str(exc),
        }
    return {
        "events": recent[::-1],  # newest first
        "by_type": dict(Counter(str(e.get("type", "")) for e in recent)),
        "dead_letters": dead[::-1],
        "types": [str(t) for t in EventType],
        "error": None,
    }


def replay(ctx: Context, token: str, dead_letter_id: int) -> dict[str, Any]:
    with _client(ctx, token) as client:
        return client.replay(dead_letter_id)


# -- quarantine ------------------------------------------------------------------------------


def quarantine(ctx: Context, *, limit: int = 200) -> dict[str, Any]:
    return {
        "rows": [r.to_json() for r in quarantined_rows(ctx.paths.quarantine, limit=limit)],
        "files": [f.to_json() for f in refused_files(ctx.paths.quarantine)],
    }


# -- audit -----------------------------------------------------------------------------------


def audit(ctx: Context, *, limit: int = 200, action: str | None = None) -> dict[str, Any]:
    """Whether the hash chain verifies, and its newest entries (optionally of one action)."""
    log = AuditLog(ctx.paths.audit)
    try:
        report = log.verify()
        verified: dict[str, Any] = {
            "verified": True,
            "entries": report.entries,
            "head_hash": report.head_hash,
            "error": None,
        }
    except AuditTampered as exc:
        verified = {"verified": False, "entries": None, "head_hash": None, "error": str(exc)}
    return {**verified, "recent": log.newest(limit, action_prefix=action) if limit else []}


# -- training --------------------------------------------------------------------------------


def training(ctx: Context, token: str | None = None) -> dict[str, Any]:
    """The launcher's runs, newest first, with how far each came, and what waits per model.

    With ``token``, also each run's loss by epoch, from the ``training.progress``
    events the jobs sent to the broker (the launcher keeps only the last one).
    """
    runs: list[dict[str, Any]] = []
    pending: dict[str, Any] = {}
    if (ctx.paths.training / TRAINING_DB).exists():
        with TrainingJobs(ctx.paths.training) as jobs:
            for run in reversed(jobs.runs()):
                runs.append(
                    {
                        **asdict(run),
                        "active": run.active,
                        "progress": run.epoch / run.epochs if run.epochs else None,
                    }
                )
            for name in jobs.models():
                waiting = jobs.pending(name)
                if waiting is not None:
                    pending[name] = asdict(waiting)
    return {
        "runs": runs,
        "pending": pending,
        "loss": _losses(ctx, token) if token is not None and runs else {},
        "ray_dashboard": ctx.settings.ray_jobs_address,
    }


def _losses(ctx: Context, token: str) -> dict[str, list[tuple[int, float]]]:
    """Each job's training loss by epoch; none when the broker does not answer."""
    try:
        with _client(ctx, token) as client:
            progress = client.events(EventType.TRAINING_PROGRESS, limit=MAX_EVENTS)
    except PlatformRequestError:
        return {}
    losses: dict[str, dict[int, float]] = {}
    for event in progress:
        data = event.get("data") or {}
        if data.get("train_loss") is not None and data.get("epoch"):
            losses.setdefault(str(data["job_id"]), {})[int(data["epoch"])] = float(
                data["train_loss"]
            )
    return {job: sorted(by_epoch.items()) for job, by_epoch in losses.items()}


# -- the platform ----------------------------------------------------------------------------


def overview(ctx: Context) -> dict[str, Any]:
    """What runs, where, and the loop's headline numbers."""
    state_file = ctx.paths.run / "platform.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    processes = [
        {"name": name, "pid": pid, "alive": pid_alive(int(pid))}
        for name, pid in state.get("processes", {}).items()
    ]
    catalog = models(ctx)["models"]
    audited = audit(ctx, limit=0)
    runs = training(ctx)["runs"]
    quarantine_dir = ctx.paths.quarantine
    return {
        "region": ctx.settings.region,
        "allowed_regions": list(ctx.settings.allowed_regions),
        "urls": {
            "broker": ctx.settings.broker_ingress,
            "router": ctx.settings.router_url,
            "ray": ctx.settings.ray_jobs_address,
            "control": ctx.settings.control_url,
        },
        "processes": processes,
        "models": len(catalog),
        "versions": sum(len(m["versions"]) for m in catalog),
        "serving": {m["model"]: m["split"] for m in catalog if m["split"] is not None},
        "audit_verified": audited["verified"],
        "audit_entries": audited["entries"],
        "training_active": sum(1 for r in runs if r["active"]),
        # Counted by name: the overview opens none of them (no folder yet: none).
        "quarantined_files": sum(
            1 for pattern in ("*.jsonl", "*" + REASON_SUFFIX) for _ in quarantine_dir.glob(pattern)
        ),
    }


# -- administration --------------------------------------------------------------------------


def tokens(ctx: Context) -> dict[str, Any]:
    """Who holds a token issued here, and what their role allows (never the tokens)."""
    from falaj.auth import PERMISSIONS

    return {
        "holders": [
            {
                "subject": p.subject,
                "role": str(p.role),
                "actions": sorted(str(a) for a in PERMISSIONS[p.role]),
            }
            for p in ctx.tokens.holders()
        ],
        "actions": [str(a) for a in Action],
    }
