"""The ``falaj`` command line: run the platform, the demo, and ask it things."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from falaj.audit import AuditLog
from falaj.auth import Role
from falaj.cli.drift import drift_app
from falaj.cli.options import (
    HomeOption,
    JsonOption,
    ModelArgument,
    console,
    err_console,
    fail,
    settings_for,
    user_token,
)
from falaj.cli.rollout import rollout_app
from falaj.context import Paths
from falaj.errors import AuditTampered, FalajError
from falaj.events import export_schemas
from falaj.settings import Settings

if TYPE_CHECKING:
    from falaj.client import PlatformClient
    from falaj.deployments import TrafficSplit
    from falaj.registry import ModelRegistry, ModelVersion

app = typer.Typer(
    name="falaj",
    help="Falaj: a serverless ML platform that keeps data in-region.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
events_app = typer.Typer(help="The event catalog and the broker's log.", no_args_is_help=True)
features_app = typer.Typer(
    help="The feature repository: datasets and model specs.", no_args_is_help=True
)
app.add_typer(audit_app, name="audit")
app.add_typer(events_app, name="events")
models_app = typer.Typer(
    help="The model registry: versions, what serves them, and their lineage.",
    no_args_is_help=True,
)
app.add_typer(features_app, name="features")
app.add_typer(models_app, name="models")
train_app = typer.Typer(
    help="Training runs: what runs, how far it came, and what waits.", no_args_is_help=True
)
app.add_typer(train_app, name="train")
app.add_typer(rollout_app, name="rollout")
app.add_typer(drift_app, name="drift")
policy_app = typer.Typer(
    help="The residency policy, checked before anything runs.", no_args_is_help=True
)
app.add_typer(policy_app, name="policy")


@app.command()
def up(home: HomeOption = None) -> None:
    """Start the platform from manifests/ and keep it running until Ctrl-C or 'falaj down'."""
    from falaj.runtime.platform import LocalPlatform

    settings = settings_for(home)
    # FALAJ_RAY_ADDRESS points at a Ray head that is already running.
    platform = LocalPlatform(settings, external_ray_address=settings.ray_address)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with console.status("starting") as status:
            platform.up(progress=lambda what: status.update(f"starting {what}"))
    except FalajError as exc:
        raise fail(str(exc)) from None
    console.print(
        f"Falaj is up: broker {settings.broker_ingress}, router "
        f"{settings.router_url}, Ray {settings.ray_jobs_address}\n"
        f"tokens per role in {platform.paths.keys}; drop files into {platform.paths.landing}"
    )
    try:
        while not stop.wait(1.0):
            dead = [name for name, ok in platform.alive().items() if not ok]
            if dead:
                err_console.print(f"[red]stopped unexpectedly:[/red] {', '.join(dead)}")
                break
    except KeyboardInterrupt:
        pass
    finally:
        with console.status("stopping"):
            platform.down()
    console.print("Falaj is down.")


@app.command()
def down(home: HomeOption = None) -> None:
    """Stop a platform started by 'falaj up' in this folder."""
    paths = Paths(settings_for(home).resolved_home)
    state_file = paths.run / "platform.json"
    if not state_file.exists():
        raise fail(f"no running platform recorded in {state_file}")
    pid = int(json.loads(state_file.read_text())["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        state_file.unlink()
        raise fail(f"process {pid} is gone; removed the stale {state_file}") from None
    deadline = time.monotonic() + 60
    while state_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # waiting for 'falaj up' to stop its processes
    console.print("Falaj is down." if not state_file.exists() else "still stopping; check again")


@app.command()
def demo(
    home: HomeOption = None,
    rows: Annotated[int, typer.Option(help="transactions in the first file")] = 4000,
    as_json: JsonOption = False,
) -> None:
    """Run the whole loop on real components and print what happened."""
    from falaj.cli.render import render_report
    from falaj.runtime.demo import DemoConfig, DemoStory, demo_home, demo_settings

    settings = demo_settings(settings_for(home or demo_home(Path.cwd())))
    # FALAJ_RAY_ADDRESS points the demo at a Ray head that is already running.
    story = DemoStory(settings, DemoConfig(rows=rows), ray_address=settings.ray_address)
    started = time.monotonic()
    try:
        with console.status("Falaj demo") as status:

            def step(what: str) -> None:
                elapsed = time.monotonic() - started
                console.print(f"[dim]{elapsed:6.1f}s[/dim] {what}")
                status.update(what)

            report = story.run(step)
    except FalajError as exc:
        raise fail(f"demo failed: {exc}") from None
    if as_json:
        console.print_json(json.dumps(asdict(report), default=str))
    else:
        render_report(report, console)
        console.print(f"The loop closed in {time.monotonic() - started:.0f} s.")
    if not report.audit_verified:
        raise fail("the audit log does not verify")


@app.command()
def predict(
    features: Annotated[
        str, typer.Argument(help="a JSON object of features, e.g. '{\"amount\": 12.5, ...}'")
    ],
    model: Annotated[
        str | None,
        typer.Option(help="model name; left out, the feature repository's only model"),
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ask the running platform for a prediction (KServe V2 over REST)."""
    from falaj.feature_repo import load_repo

    settings = settings_for(home)
    try:
        values = json.loads(features)
        repo = load_repo(settings)
        spec = repo.model(model) if model is not None else repo.only_model()
        names = spec.features
        missing = [n for n in names if n not in values]
        if missing:
            raise FalajError(f"missing features {missing}; expected all of {list(names)}")
        with _client(settings, Role.ML_ENGINEER) as client:
            result = client.predict(spec.name, [[float(values[n]) for n in names]])
    except json.JSONDecodeError as exc:
        raise fail(f"features must be a JSON object: {exc}") from None
    except FalajError as exc:
        raise fail(str(exc)) from None
    if as_json:
        console.print_json(json.dumps(asdict(result)))
    else:
        console.print(
            f"{spec.name} v{result.version} ({result.variant}): "
            f"probability of {spec.label} {result.probabilities[0]:.4f}"
        )


@app.command()
def status(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """What runs, where, and whether it is alive."""
    paths = Paths(settings_for(home).resolved_home)
    state_file = paths.run / "platform.json"
    if not state_file.exists():
        raise fail("no platform is running here ('falaj up' starts one)")
    state = json.loads(state_file.read_text())
    alive = {name: _pid_alive(pid) for name, pid in state["processes"].items()}
    if as_json:
        console.print_json(json.dumps({**state, "alive": alive}))
        return
    for name, pid in state["processes"].items():
        mark = "[green]up[/green]" if alive[name] else "[red]down[/red]"
        console.print(f"{mark:>20} {name:<28} pid {pid}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@audit_app.command("verify")
def audit_verify(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Check the hash chain; exit 1 naming the first broken entry."""
    log = AuditLog(Paths(settings_for(home).resolved_home).audit)
    try:
        report = log.verify()
    except AuditTampered as exc:
        if as_json:
            console.print_json(json.dumps({"verified": False, "error": str(exc)}))
            raise typer.Exit(1) from None
        raise fail(f"audit log tampered: {exc}") from None
    if as_json:
        console.print_json(json.dumps({"verified": True, "entries": report.entries}))
    else:
        console.print(f"audit log verified: {report.entries} entries, head {report.head_hash[:16]}")


@audit_app.command("show")
def audit_show(
    home: HomeOption = None,
    last: Annotated[int, typer.Option(help="entries from the end")] = 20,
) -> None:
    """Print the last entries."""
    log = AuditLog(Paths(settings_for(home).resolved_home).audit)
    for entry in list(log.entries())[-last:]:
        console.print(
            f"{entry['seq']:>5} {entry['time'][:19]} {entry['action']:<22} {entry['outcome']:<8}"
            f" {entry['actor']:<18} {entry['resource']}"
        )


@audit_app.command("export")
def audit_export(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="a JSON Lines file; left out, stdout")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="entries at or after this ISO 8601 time, e.g. 2026-11-24")
    ] = None,
    action: Annotated[
        str | None, typer.Option(help="entries whose action starts with this, e.g. model.")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Write the audit log as JSON Lines for a SIEM, after checking its hash chain.

    Each line is the entry as stored, hashes included, so the receiver can check
    the chain again. A log that does not verify is not exported: what it holds
    cannot be vouched for.
    """
    log = AuditLog(Paths(settings_for(home).resolved_home).audit)
    try:
        report = log.verify()
    except AuditTampered as exc:
        raise fail(f"audit log tampered, not exported: {exc}") from None
    if since is not None:
        try:
            start = datetime.fromisoformat(since)
        except ValueError:
            raise fail(
                f"--since: expected an ISO 8601 time such as 2026-11-24, got {since!r}"
            ) from None
        start = start if start.tzinfo else start.replace(tzinfo=UTC)
    chosen = [
        entry
        for entry in log.entries()
        if (since is None or datetime.fromisoformat(entry["time"]) >= start)
        and (action is None or str(entry["action"]).startswith(action))
    ]
    lines = "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in chosen)
    if output is None:
        sys.stdout.write(lines)
        return
    output.write_text(lines)
    err_console.print(
        f"exported {len(chosen)} of {report.entries} entries (chain verified, head "
        f"{report.head_hash[:16]}) to {output}"
    )


@policy_app.command("check")
def policy_check(
    manifests: Annotated[
        Path | None, typer.Option(help="the manifests to read; default FALAJ_MANIFESTS_DIR")
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List every destination the manifests and settings name; exit 1 if any leaves the region."""
    from rich.table import Table

    from falaj.policy_check import check, configured_destinations, manifest_destinations
    from falaj.residency import ResidencyPolicy

    settings = settings_for(home)
    policy = ResidencyPolicy.from_settings(settings)
    folder = manifests or settings.manifests_dir
    if not folder.is_dir():
        raise fail(f"no manifests folder at {folder}; pass --manifests DIR")
    verdicts = check(policy, [*manifest_destinations(folder), *configured_destinations(settings)])
    leaving = [v for v in verdicts if not v.allowed]
    if as_json:
        console.print_json(json.dumps([v.to_json() for v in verdicts]))
    else:
        table = Table(title=f"destinations (allowed: {', '.join(settings.allowed_regions)})")
        for column in ("named in", "destination", "region", "verdict"):
            table.add_column(column)
        for v in verdicts:
            table.add_row(
                v.source,
                v.location,
                v.region or "unknown",
                "in region" if v.allowed else "[red]LEAVES THE REGION[/red]",
            )
        console.print(table)
        console.print(
            f"{len(leaving)} of {len(verdicts)} destinations outside the allowed regions"
            + (
                ""
                if not leaving
                else "; declare their region in FALAJ_STORAGE_REGIONS or move them"
            )
        )
    if leaving:
        raise typer.Exit(1)


@features_app.command("check")
def features_check(as_json: JsonOption = False) -> None:
    """Check every dataset and model spec (FALAJ_FEATURE_REPO) and list their Feast names."""
    from falaj.feature_repo import load_repo
    from falaj.features import (
        feature_service_name,
        feature_view_name,
        push_source_name,
    )

    settings = settings_for(None)
    try:
        repo = load_repo(settings)
    except FalajError as exc:
        raise fail(str(exc)) from None
    datasets = {
        name: {
            "entity": schema.entity,
            "timestamp": schema.timestamp,
            "label": schema.label,
            "pii": list(schema.pii_columns),
            "landing": f"landing/{name}/",
            "feature_view": feature_view_name(name),
            "push_source": push_source_name(name),
            "models": [spec.name for spec in repo.models_of(name)],
        }
        for name, schema in repo.datasets.items()
    }
    models = {
        name: {
            "dataset": spec.dataset,
            "family": str(spec.family),
            "hidden": list(spec.hidden),
            "features": list(spec.features),
            "label": spec.label,
            "feature_service": feature_service_name(name),
        }
        for name, spec in repo.models.items()
    }
    if as_json:
        console.print_json(
            json.dumps({"repository": str(repo.path), "datasets": datasets, "models": models})
        )
        return
    console.print(
        f"feature repository {repo.path}: {len(datasets)} dataset(s), {len(models)} model(s)"
    )
    for name, schema in repo.datasets.items():
        console.print(
            f"dataset {name}: entity {schema.entity}, label {schema.label}, files land in "
            f"landing/{name}/, Feast view {feature_view_name(name)}"
        )
    for name, spec in repo.models.items():
        console.print(
            f"model {name}: {spec.family} on {spec.dataset}, inputs {', '.join(spec.features)}, "
            f"Feast service {feature_service_name(name)}"
        )


@events_app.command("schemas")
def events_schemas(
    out: Annotated[Path, typer.Option(help="folder to write one JSON Schema per event type")],
) -> None:
    """Export the schema registry: a JSON Schema for each event type's data."""
    for path in export_schemas(out):
        console.print(str(path))


@events_app.command("list")
def events_list(
    home: HomeOption = None,
    event_type: Annotated[str | None, typer.Option("--type")] = None,
    as_json: JsonOption = False,
) -> None:
    """Recent events in the broker."""
    from falaj.events import EventType

    try:
        with _client(settings_for(home), Role.VIEWER) as client:
            events = client.events(EventType(event_type) if event_type else None)
    except (FalajError, ValueError) as exc:
        raise fail(str(exc)) from None
    if as_json:
        console.print_json(json.dumps(events))
        return
    for event in events:
        console.print(f"{event.get('time', '')[:19]} {event['type']:<40} {event['id']}")


def _client(settings: Settings, role: Role) -> PlatformClient:
    from falaj.client import PlatformClient

    return PlatformClient.from_settings(
        settings, token=user_token(Paths(settings.resolved_home), role)
    )


@events_app.command("dead")
def events_dead(
    home: HomeOption = None,
    limit: Annotated[int, typer.Option(help="newest dead letters to show")] = 100,
    as_json: JsonOption = False,
) -> None:
    """Events the broker could not deliver (or refused at ingress), with the reason."""
    try:
        with _client(settings_for(home), Role.VIEWER) as client:
            letters = client.dead_letters(limit)
    except FalajError as exc:
        raise fail(str(exc)) from None
    if as_json:
        console.print_json(json.dumps(letters))
        return
    if not letters:
        console.print("no dead letters")
    for letter in letters:
        replay = "replayable" if letter.get("replayable") else "not replayable"
        console.print(
            f"{letter['id']:>5} {letter.get('event_type')!s:<36} "
            f"{letter.get('trigger') or 'ingress'!s:<24} attempts {letter['attempts']} "
            f"({replay}): {letter['reason']}"
        )


@events_app.command("replay")
def events_replay(
    dead_letter_ids: Annotated[list[int], typer.Argument(help="ids from 'falaj events dead'")],
    home: HomeOption = None,
) -> None:
    """Send dead letters again (platform-admin)."""
    failed = 0
    try:
        with _client(settings_for(home), Role.PLATFORM_ADMIN) as client:
            for dead_letter_id in dead_letter_ids:
                try:
                    result = client.replay(dead_letter_id)
                except FalajError as exc:
                    failed += 1
                    err_console.print(f"[red]{dead_letter_id}:[/red] {exc}")
                    continue
                console.print(f"{dead_letter_id}: queued again as delivery {result['delivery']}")
    except FalajError as exc:
        raise fail(str(exc)) from None
    if failed:
        raise typer.Exit(1)


# -- the model registry ------------------------------------------------------------

VersionOption = Annotated[
    str | None,
    typer.Option(
        "--version",
        "-v",
        help="a version number, or an alias: production, canary (default: the latest)",
    ),
]


def _serving(home: Path | None) -> tuple[ModelRegistry, dict[str, TrafficSplit]]:
    from falaj.context import Context
    from falaj.deployments import DeploymentStore
    from falaj.registry import ModelRegistry

    ctx = Context.create(settings_for(home), actor="cli")
    with DeploymentStore(ctx) as deployments:
        splits = {split.model: split for split in deployments.all()}
    return ModelRegistry(ctx), splits


def _role(split: TrafficSplit | None, version: int) -> str:
    """What a version is to traffic: its alias and its share, or nothing."""
    from falaj.deployments import Alias

    if split is None:
        return ""
    shares = {Alias.PRODUCTION: 100 - split.canary_percent, Alias.CANARY: split.canary_percent}
    for alias, named in split.aliases.items():
        if named == version:
            return f"{alias} ({shares[alias]}%)"
    return ""


def _aliases(split: TrafficSplit | None, version: int) -> list[str]:
    """The registry aliases that name ``version``: production, canary, or none."""
    if split is None:
        return []
    return [str(alias) for alias, named in split.aliases.items() if named == version]


def _found(
    home: Path | None, model: str, version: str | None
) -> tuple[ModelVersion, TrafficSplit | None]:
    """The version asked for (a number or an alias; the latest by default) and its split."""
    from falaj.deployments import Alias

    try:
        registry, splits = _serving(home)
        split = splits.get(model)
        if version is not None and version.isdigit():
            return registry.get(model, int(version)), split
        if version is not None:
            aliases = {} if split is None else {str(a): v for a, v in split.aliases.items()}
            if version not in aliases:
                known = ", ".join(f"{a} (v{v})" for a, v in aliases.items()) or "none"
                raise FalajError(
                    f"{version!r} is not a version of {model!r}; expected a number or one of "
                    f"the aliases {', '.join(Alias)}; {model!r} has {known}"
                )
            return registry.get(model, aliases[version]), split
        latest = registry.latest(model)
        if latest is None:
            raise FalajError(
                f"model {model!r} has no version; registered models: {registry.models() or 'none'}"
            )
        return latest, splits.get(model)
    except FalajError as exc:
        raise fail(str(exc)) from None


@models_app.command("list")
def models_list(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Every version of every model, with its metrics and what it serves."""
    from rich.table import Table

    try:
        registry, splits = _serving(home)
        versions = [v for model in registry.models() for v in registry.versions(model)]
    except FalajError as exc:
        raise fail(str(exc)) from None
    rows = [
        {
            "model": v.model,
            "version": v.version,
            "created": v.created,
            "serving": _role(splits.get(v.model), v.version),
            "aliases": _aliases(splits.get(v.model), v.version),
            "metrics": dict(v.metrics),
            "digest": v.digest,
        }
        for v in versions
    ]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("model", "version", "created", "serving", "auc", "log-loss", "digest")
    for v in versions:
        auc, log_loss = v.metrics.get("auc"), v.metrics.get("log_loss")
        table.add_row(
            v.model,
            str(v.version),
            v.created[:19],
            _role(splits.get(v.model), v.version),
            "" if auc is None else f"{auc:.3f}",
            "" if log_loss is None else f"{log_loss:.3f}",
            v.digest[:12],
        )
    console.print(table)


@models_app.command("show")
def models_show(
    model: ModelArgument,
    version: VersionOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """One version: digest, region, metrics, inputs and what it serves."""
    found, split = _found(home, model, version)
    shown = {
        **{k: v for k, v in found.to_json().items() if k != "lineage"},
        "serving": _role(split, found.version),
        "aliases": _aliases(split, found.version),
        "location": found.location,
    }
    if as_json:
        console.print_json(json.dumps(shown))
        return
    for key, value in shown.items():
        console.print(f"[bold]{key}[/bold]: {value}")


@models_app.command("lineage")
def models_lineage(
    model: ModelArgument,
    version: VersionOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Where a version came from: its data, features, code, job and parameters."""
    found, _ = _found(home, model, version)
    lineage = dict(found.lineage)
    if as_json:
        console.print_json(json.dumps({"model": model, "version": found.version, **lineage}))
        return
    console.print(f"[bold]{model}[/bold] version {found.version} (sha256 {found.digest[:16]})")
    for key, value in lineage.items():
        console.print(f"  [bold]{key}[/bold]: {json.dumps(value, default=str)}")


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


@app.command("lineage")
def lineage(
    model: ModelArgument,
    version: Annotated[str, typer.Argument(help="a version number or an alias")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Which data, features, code and job made a version, and who moved it when."""
    found, _ = _found(home, model, version)
    resource = f"model/{model}/{found.version}"
    log = AuditLog(Paths(settings_for(home).resolved_home).audit)
    history = [
        {
            "time": entry["time"],
            "action": entry["action"],
            "outcome": entry["outcome"],
            "actor": entry["actor"],
            "role": entry["role"],
            "reason": (entry.get("details") or {}).get("reason"),
        }
        for entry in log.entries()
        if entry["resource"] == resource and entry["action"] in VERSION_STEPS
    ]
    record = {
        "model": model,
        "version": found.version,
        "sha256": found.digest,
        "features": list(found.feature_names),
        "metrics": dict(found.metrics),
        "lineage": dict(found.lineage),
        "history": history,
    }
    if as_json:
        console.print_json(json.dumps(record, default=str))
        return
    console.print(f"[bold]{model}[/bold] version {found.version} (sha256 {found.digest[:16]})")
    console.print(f"  [bold]features[/bold]: {', '.join(found.feature_names)}")
    for key, value in found.lineage.items():
        console.print(f"  [bold]{key}[/bold]: {json.dumps(value, default=str)}")
    from rich.table import Table

    table = Table(title="history (audit log)", title_justify="left")
    for column in ("time", "action", "outcome", "by", "role", "why"):
        table.add_column(column)
    for step in history:
        table.add_row(
            str(step["time"])[:19],
            str(step["action"]),
            str(step["outcome"]),
            str(step["actor"]),
            str(step["role"]),
            str(step["reason"] or ""),
        )
    console.print(table)


# -- training runs -------------------------------------------------------------------

#: Cells of the text progress bar in ``falaj train status``.
BAR_WIDTH = 20


def progress_bar(epoch: int, epochs: int, width: int = BAR_WIDTH) -> str:
    """``[#######-------------]  7/20`` for a run that trains; empty before it knows its epochs."""
    if epochs <= 0:
        return ""
    done = min(epoch, epochs)
    filled = round(width * done / epochs)
    return f"[{'#' * filled}{'-' * (width - filled)}] {done:>{len(str(epochs))}}/{epochs}"


@train_app.command("status")
def train_status(
    model: Annotated[str | None, typer.Argument(help="one model (default: all)")] = None,
    home: HomeOption = None,
    limit: Annotated[int, typer.Option(help="newest runs to show per model")] = 10,
    as_json: JsonOption = False,
) -> None:
    """The launcher's training runs, newest last, with a progress bar, and what waits."""
    from rich.markup import escape
    from rich.table import Table

    from falaj.training_runs import DB_FILE, TrainingJobs

    directory = Paths(settings_for(home).resolved_home).training
    if not (directory / DB_FILE).exists():  # reading must not create the launcher's state
        console.print("no training runs (the training launcher has launched none here)")
        return
    try:
        with TrainingJobs(directory) as jobs:
            runs = jobs.runs(model)
            models = sorted(
                m for m in {run.model for run in runs} | set(jobs.models()) if model in (None, m)
            )
            pending = {m: jobs.pending(m) for m in models}
    except (FalajError, OSError) as exc:
        raise fail(f"cannot read the training runs: {exc}") from None
    by_model = {m: [run for run in runs if run.model == m][-limit:] for m in models}
    if as_json:
        shown = {}
        for m in models:
            waiting = pending[m]
            shown[m] = {
                "runs": [asdict(run) for run in by_model[m]],
                "pending": None if waiting is None else asdict(waiting),
            }
        console.print_json(json.dumps(shown, default=str))
        return
    if not models:
        console.print("no training runs" + (f" for {model!r}" if model else ""))
        return
    for name in models:
        table = Table(title=f"training runs of {name}", title_justify="left")
        for column in ("job", "reason", "status", "stage", "progress", "loss", "try", "note"):
            table.add_column(column)
        for run in by_model[name]:
            table.add_row(
                run.job_id,
                str(run.reason) + (" (urgent)" if run.urgent else ""),
                run.status + (f", {run.announced}" if run.announced else ""),
                "" if run.stage is None else str(run.stage),
                escape(progress_bar(run.epoch, run.epochs)),
                "" if run.train_loss is None else f"{run.train_loss:.4f}",
                str(run.attempt),
                (run.message or "")[:80],
            )
        console.print(table)
        waiting = pending[name]
        if waiting is not None:
            console.print(
                f"  waiting: {waiting.reason}{' (urgent)' if waiting.urgent else ''}, "
                f"{waiting.requests} request(s) merged"
                + (f", resumes run {waiting.run_name}" if waiting.run_name else "")
            )


if __name__ == "__main__":
    app()
