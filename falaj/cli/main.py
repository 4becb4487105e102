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
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import (
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from falaj.audit import AuditLog
from falaj.auth import Role
from falaj.catalog import aliases_of, serving_role, version_history
from falaj.cli.drift import drift_app
from falaj.cli.ingest import ingest
from falaj.cli.options import (
    PLATFORM_ERRORS,
    FalajGroup,
    HomeOption,
    JsonOption,
    ModelArgument,
    bars,
    complete_model,
    console,
    counted_bars,
    emit_json,
    err_console,
    fail,
    platform_state,
    settings_for,
    unreachable,
    user_token,
)
from falaj.cli.rollout import rollout_app
from falaj.cli.status import status
from falaj.cli.train import train_app
from falaj.context import Paths
from falaj.errors import AuditTampered, FalajError
from falaj.events import export_schemas
from falaj.settings import Settings

if TYPE_CHECKING:
    from falaj.client import PlatformClient
    from falaj.deployments import TrafficSplit
    from falaj.registry import ModelRegistry, ModelVersion
    from falaj.runtime.platform import LocalPlatform

app = typer.Typer(
    name="falaj",
    help="Falaj: a serverless ML platform that keeps data in-region.",
    cls=FalajGroup,
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
app.add_typer(train_app, name="train")
app.add_typer(rollout_app, name="rollout")
app.add_typer(drift_app, name="drift")
policy_app = typer.Typer(
    help="The residency policy, checked before anything runs.", no_args_is_help=True
)
app.add_typer(policy_app, name="policy")

#: Seconds ``falaj down`` waits for ``falaj up`` to stop its processes.
DOWN_TIMEOUT_S = 60.0


def _spinner(as_json: bool) -> Progress:
    return bars(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        as_json=as_json,
        transient=True,
    )


@app.command()
def up(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Start the platform from manifests/ and keep it running until Ctrl-C or 'falaj down'.

    With --json, one JSON object once it is ready (its URLs, token files, folders).
    """
    from falaj.runtime.platform import LocalPlatform

    settings = settings_for(home)
    # FALAJ_RAY_ADDRESS points at a Ray head that is already running.
    platform = LocalPlatform(settings, external_ray_address=settings.ray_address)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        _run(platform, stop, as_json=as_json)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(platform: LocalPlatform, stop: threading.Event, *, as_json: bool) -> None:
    paths = platform.paths
    try:
        with _spinner(as_json) as progress:
            task = progress.add_task("starting", total=None)
            platform.up(progress=lambda what: progress.update(task, description=f"starting {what}"))
    except FalajError as exc:
        raise fail(
            str(exc),
            hint=f"the components' logs are in {paths.logs}; 'falaj status' shows a platform "
            "that already runs here",
        ) from None
    dead: list[str] = []
    try:  # from here on, whatever happens, the processes are stopped
        _announce_ready(paths, as_json=as_json)
        while not stop.wait(1.0):
            dead = [name for name, ok in platform.alive().items() if not ok]
            if dead:
                break
    except KeyboardInterrupt:
        pass
    finally:
        with _spinner(as_json) as progress:
            progress.add_task("stopping", total=None)
            platform.down()
    if dead:
        raise fail(
            f"stopped unexpectedly: {', '.join(dead)}; the platform was stopped",
            hint=f"read {', '.join(str(paths.logs / f'{name}.log') for name in dead)}, "
            "then start it again with 'falaj up'",
        )
    (err_console if as_json else console).print("Falaj is down.")


def _announce_ready(paths: Paths, *, as_json: bool) -> None:
    ready = ready_record(paths, platform_state(paths.home))
    if as_json:
        emit_json(ready, one_line=True)
        return
    control = ready.get("control")
    console.print(
        f"Falaj is up: broker {ready['broker']}, router {ready['router']}, Ray {ready['ray']}"
        + (
            f"\ndashboard: {control} (log in with a token file's contents, e.g. "
            f"{paths.keys / 'viewer.token'})"
            if isinstance(control, str)
            else ""
        )
        + f"\ntokens per role in {paths.keys}; drop files into {paths.landing} "
        "(or 'falaj ingest FILE')"
    )


def ready_record(paths: Paths, state: dict[str, Any]) -> dict[str, Any]:
    """What ``falaj up --json`` prints once ready: URLs, PIDs, folders and token *files*.

    A token's value never leaves its file (mode 0600): a script reads the file.
    """
    tokens = {
        str(role): str(paths.keys / f"{role}.token")
        for role in Role
        if role is not Role.SERVICE and (paths.keys / f"{role}.token").exists()
    }
    return {
        "status": "up",
        **state,
        "tokens": tokens,
        "landing": str(paths.landing),
        "logs": str(paths.logs),
        "audit": str(paths.audit),
    }


@app.command()
def down(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Stop a platform started by 'falaj up' in this folder."""
    home_dir = settings_for(home).resolved_home
    state_file = Paths(home_dir).run / "platform.json"
    pid = int(platform_state(home_dir)["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        state_file.unlink(missing_ok=True)
        raise fail(
            f"process {pid} of 'falaj up' is gone; removed the stale {state_file}",
            hint="nothing is left to stop; 'falaj up' starts the platform again",
        ) from None
    deadline = time.monotonic() + DOWN_TIMEOUT_S
    with _spinner(as_json) as progress:
        progress.add_task(f"stopping falaj up (pid {pid})", total=None)
        while state_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)  # waiting for 'falaj up' to stop its processes
    if state_file.exists():
        raise fail(
            f"'falaj up' (pid {pid}) is still stopping after {DOWN_TIMEOUT_S:.0f} s",
            hint="'falaj status' shows what still runs; run 'falaj down' again to wait longer",
        )
    if as_json:
        emit_json({"stopped": True, "pid": pid})
    else:
        console.print("Falaj is down.")


class DemoSteps:
    """The demo's steps as one bar: the platform's start is one step, then each story step.

    Every step is also a line on stderr with its time, as a log; the bar
    (when shown) stays under the lines.
    """

    def __init__(self, progress: Progress, *, story_steps: int, start_prefix: str) -> None:
        self.progress = progress
        self.start_prefix = start_prefix
        self.started = time.monotonic()
        self.total = 1 + story_steps
        self.task = progress.add_task("starting the platform", total=self.total)

    def __call__(self, what: str) -> None:
        elapsed = time.monotonic() - self.started
        self.progress.console.print(f"[dim]{elapsed:6.1f}s[/dim] {escape(what)}", highlight=False)
        if not what.startswith(self.start_prefix):
            self.progress.advance(self.task)  # the step before this one is done
        self.progress.update(self.task, description=escape(what))

    def finish(self) -> None:
        self.progress.update(self.task, completed=self.total, description="done")


@app.command()
def demo(
    home: HomeOption = None,
    rows: Annotated[int, typer.Option(help="transactions in the first file")] = 4000,
    as_json: JsonOption = False,
) -> None:
    """Run the whole loop on real components and print what happened."""
    from falaj.cli.render import render_report
    from falaj.runtime.demo import (
        START_PREFIX,
        STEPS,
        DemoConfig,
        DemoStory,
        demo_home,
        demo_settings,
    )

    settings = demo_settings(settings_for(home or demo_home(Path.cwd())))
    # FALAJ_RAY_ADDRESS points the demo at a Ray head that is already running.
    story = DemoStory(settings, DemoConfig(rows=rows), ray_address=settings.ray_address)
    progress = counted_bars(
        as_json=as_json,
    )
    try:
        with progress:
            steps = DemoSteps(progress, story_steps=STEPS, start_prefix=START_PREFIX)
            report = story.run(steps)
            steps.finish()
    except FalajError as exc:
        raise fail(
            f"demo failed: {exc}",
            hint=f"the components' logs are in {Paths(settings.resolved_home).logs}",
        ) from None
    if as_json:
        emit_json(asdict(report))
    else:
        render_report(report, console)
        console.print(f"The loop closed in {time.monotonic() - steps.started:.0f} s.")
    if not report.audit_verified:
        raise fail(
            "the audit log does not verify",
            hint="'falaj audit verify --home "
            f"{settings.resolved_home}' names the first broken entry",
        )


@app.command()
def predict(
    features: Annotated[
        str, typer.Argument(help="a JSON object of features, e.g. '{\"amount\": 12.5, ...}'")
    ],
    model: Annotated[
        str | None,
        typer.Option(
            help="model name; left out, the feature repository's only model",
            autocompletion=complete_model,
        ),
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ask the running platform for a prediction (KServe V2 over REST)."""
    from falaj.feature_repo import load_repo

    settings = settings_for(home)
    try:
        values = json.loads(features)
    except json.JSONDecodeError as exc:
        raise fail(
            f"features must be a JSON object: {exc}",
            hint='quote the object for the shell, e.g. \'{"amount": 12.5, "hour": 3}\'',
        ) from None
    try:
        repo = load_repo(settings)
        spec = repo.model(model) if model is not None else repo.only_model()
    except FalajError as exc:
        raise fail(
            str(exc), hint="pass --model NAME; 'falaj features check' lists the models"
        ) from None
    names = spec.features
    missing = [n for n in names if not isinstance(values, dict) or n not in values]
    if missing:
        raise fail(
            f"missing features {missing}; expected all of {list(names)}",
            hint=f"pass every input of {spec.name!r} in the JSON object",
        )
    try:
        with _client(settings, Role.ML_ENGINEER) as client:
            result = client.predict(spec.name, [[float(values[n]) for n in names]])
    except (TypeError, ValueError) as exc:
        raise fail(
            f"every feature must be a number: {exc}", hint='pass numbers, e.g. {"hour": 3}'
        ) from None
    except PLATFORM_ERRORS as exc:
        raise unreachable(exc) from None
    if as_json:
        emit_json(asdict(result))
    else:
        console.print(
            f"{spec.name} v{result.version} ({result.variant}): "
            f"probability of {spec.label} {result.probabilities[0]:.4f}"
        )


@audit_app.command("verify")
def audit_verify(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Check the hash chain; exit 1 naming the first broken entry."""
    log = AuditLog(Paths(settings_for(home).resolved_home).audit)
    hint = "restore the log from a copy you trust; 'falaj audit export' refuses a broken chain"
    try:
        report = log.verify()
    except AuditTampered as exc:
        if as_json:  # the verdict is the result: it goes to stdout, as 'verified: true' does
            emit_json({"verified": False, "error": str(exc), "hint": hint})
            raise typer.Exit(1) from None
        raise fail(f"audit log tampered: {exc}", hint=hint) from None
    if as_json:
        emit_json({"verified": True, "entries": report.entries, "head": report.head_hash})
    else:
        console.print(f"audit log verified: {report.entries} entries, head {report.head_hash[:16]}")


@audit_app.command("show")
def audit_show(
    home: HomeOption = None,
    last: Annotated[int, typer.Option(help="entries from the end")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Print the last entries."""
    log = AuditLog(Paths(settings_for(home).resolved_home).audit)
    entries = list(log.entries())[-last:] if last > 0 else []
    if as_json:
        emit_json(entries)
        return
    for entry in entries:
        console.print(
            f"{entry['seq']:>5} {entry['time'][:19]} {entry['action']:<22} {entry['outcome']:<8}"
            f" {entry['actor']:<18} {entry['resource']}",
            markup=False,
            highlight=False,
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
    as_json: JsonOption = False,
) -> None:
    """Write the audit log as JSON Lines for a SIEM, after checking its hash chain.

    Each line is the entry as stored, hashes included, so the receiver can check
    the chain again. A log that does not verify is not exported: what it holds
    cannot be vouched for. With --json, stdout is one object: what was exported,
    and the entries themselves when no --output is given.
    """
    log = AuditLog(Paths(settings_for(home).resolved_home).audit)
    try:
        report = log.verify()
    except AuditTampered as exc:
        raise fail(
            f"audit log tampered, not exported: {exc}",
            hint="'falaj audit verify' names the first broken entry; restore the log from a "
            "copy you trust",
        ) from None
    if since is not None:
        try:
            start = datetime.fromisoformat(since)
        except ValueError:
            raise fail(
                f"--since: expected an ISO 8601 time such as 2026-11-24, got {since!r}",
                hint="pass a date or a time, e.g. --since 2026-11-24T08:00",
            ) from None
        start = start if start.tzinfo else start.replace(tzinfo=UTC)
    chosen = [
        entry
        for entry in log.entries()
        if (since is None or datetime.fromisoformat(entry["time"]) >= start)
        and (action is None or str(entry["action"]).startswith(action))
    ]
    lines = "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in chosen)
    if output is not None:
        try:
            output.write_text(lines)
        except OSError as exc:
            raise fail(
                f"cannot write {output}: {exc}", hint="pass --output a file in a writable folder"
            ) from None
    summary = {
        "exported": len(chosen),
        "entries": report.entries,
        "head": report.head_hash,
        "output": None if output is None else str(output),
    }
    if as_json:
        emit_json(summary if output is not None else {**summary, "lines": chosen})
    elif output is None:
        sys.stdout.write(lines)
    else:
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
        raise fail(
            f"no manifests folder at {folder}",
            hint="pass --manifests DIR, or set FALAJ_MANIFESTS_DIR to the folder",
        )
    try:
        found = [*manifest_destinations(folder), *configured_destinations(settings)]
    except FalajError as exc:
        raise fail(str(exc), hint=f"fix the manifest it names in {folder}") from None
    verdicts = check(policy, found)
    leaving = [v for v in verdicts if not v.allowed]
    if as_json:
        emit_json([v.to_json() for v in verdicts])
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
        raise fail(
            str(exc),
            hint="fix the file it names (README, 'Bring your own data', shows both formats), "
            "or point FALAJ_FEATURE_REPO at another repository",
        ) from None
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
        emit_json({"repository": str(repo.path), "datasets": datasets, "models": models})
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
    as_json: JsonOption = False,
) -> None:
    """Export the schema registry: a JSON Schema for each event type's data."""
    try:
        written = [str(path) for path in export_schemas(out)]
    except OSError as exc:
        raise fail(f"cannot write to {out}: {exc}", hint="pass --out a writable folder") from None
    if as_json:
        emit_json({"schemas": written})
        return
    for path in written:
        console.print(path, markup=False, highlight=False)


@events_app.command("list")
def events_list(
    home: HomeOption = None,
    event_type: Annotated[
        str | None, typer.Option("--type", help="one event type, e.g. dev.falaj.data.ingested")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Recent events in the broker."""
    from falaj.events import EventType

    try:
        chosen = EventType(event_type) if event_type else None
    except ValueError:
        raise fail(
            f"--type {event_type!r} is not an event type of the catalog",
            hint="pass one of " + ", ".join(EventType),
        ) from None
    try:
        with _client(settings_for(home), Role.VIEWER) as client:
            events = client.events(chosen)
    except PLATFORM_ERRORS as exc:
        raise unreachable(exc) from None
    if as_json:
        emit_json(events)
        return
    for event in events:
        console.print(
            f"{event.get('time', '')[:19]} {event['type']:<40} {event['id']}", markup=False
        )


def _client(settings: Settings, role: Role) -> PlatformClient:
    """A client of the running platform with ``role``'s token; ``FalajError`` when there is none."""
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
    except PLATFORM_ERRORS as exc:
        raise unreachable(exc) from None
    if as_json:
        emit_json(letters)
        return
    if not letters:
        console.print("no dead letters")
    for letter in letters:
        replay = "replayable" if letter.get("replayable") else "not replayable"
        console.print(
            f"{letter['id']:>5} {letter.get('event_type')!s:<36} "
            f"{letter.get('trigger') or 'ingress'!s:<24} attempts {letter['attempts']} "
            f"({replay}): {letter['reason']}",
            markup=False,
        )


@events_app.command("replay")
def events_replay(
    dead_letter_ids: Annotated[list[int], typer.Argument(help="ids from 'falaj events dead'")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send dead letters again (platform-admin)."""
    replayed: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    try:
        with _client(settings_for(home), Role.PLATFORM_ADMIN) as client:
            for dead_letter_id in dead_letter_ids:
                try:
                    result = client.replay(dead_letter_id)
                except FalajError as exc:
                    failed.append({"id": dead_letter_id, "error": str(exc)})
                    if not as_json:
                        err_console.print(f"[red]{dead_letter_id}:[/red] {escape(str(exc))}")
                    continue
                replayed.append({"id": dead_letter_id, "delivery": result["delivery"]})
                if not as_json:
                    console.print(
                        f"{dead_letter_id}: queued again as delivery {result['delivery']}"
                    )
    except PLATFORM_ERRORS as exc:
        raise unreachable(exc) from None
    if as_json:
        emit_json({"replayed": replayed, "failed": failed})
    if failed:
        raise fail(
            f"{len(failed)} of {len(dead_letter_ids)} dead letters were not replayed",
            hint="'falaj events dead' lists their ids and whether each is replayable",
        )


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
        raise fail(
            str(exc), hint="'falaj models list' shows every model, its versions and aliases"
        ) from None


@models_app.command("list")
def models_list(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Every version of every model, with its metrics and what it serves."""
    from rich.table import Table

    try:
        registry, splits = _serving(home)
        versions = [v for model in registry.models() for v in registry.versions(model)]
    except FalajError as exc:
        raise fail(
            f"cannot read the registry: {exc}", hint="pass --home to the platform's folder"
        ) from None
    rows = [
        {
            "model": v.model,
            "version": v.version,
            "created": v.created,
            "serving": serving_role(splits.get(v.model), v.version),
            "aliases": aliases_of(splits.get(v.model), v.version),
            "metrics": dict(v.metrics),
            "digest": v.digest,
        }
        for v in versions
    ]
    if as_json:
        emit_json(rows)
        return
    table = Table("model", "version", "created", "serving", "auc", "log-loss", "digest")
    for v in versions:
        auc, log_loss = v.metrics.get("auc"), v.metrics.get("log_loss")
        table.add_row(
            v.model,
            str(v.version),
            v.created[:19],
            serving_role(splits.get(v.model), v.version),
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
        "serving": serving_role(split, found.version),
        "aliases": aliases_of(split, found.version),
        "location": found.location,
    }
    if as_json:
        emit_json(shown)
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
        emit_json({"model": model, "version": found.version, **lineage})
        return
    console.print(f"[bold]{model}[/bold] version {found.version} (sha256 {found.digest[:16]})")
    for key, value in lineage.items():
        console.print(f"  [bold]{key}[/bold]: {json.dumps(value, default=str)}")


@app.command("lineage")
def lineage(
    model: ModelArgument,
    version: Annotated[str, typer.Argument(help="a version number or an alias")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Which data, features, code and job made a version, and who moved it when."""
    found, _ = _found(home, model, version)
    log = AuditLog(Paths(settings_for(home).resolved_home).audit)
    history = version_history(log, model, found.version)
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
        emit_json(record)
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


# Commands of their own modules, listed after the ones above in --help.
app.command()(status)
app.command()(ingest)

if __name__ == "__main__":
    app()
