"""``falaj rollout``: a model's traffic split, its A/B report, and the steps that change it.

    falaj rollout status fraud            the split, each variant's metrics, the A/B tests
    falaj rollout canary fraud 3 -p 20    version 3 takes 20% (or -p alone resizes the canary)
    falaj rollout promote fraud           the canary becomes stable
    falaj rollout rollback fraud          all traffic back to the stable version
    falaj rollout shadow fraud 4          version 4 gets a copy of every request (--off stops it)

A step is applied to the local deployment store the way ``kubectl patch``
edits an InferenceService: through ``falaj.rollouts`` (the same rules the
rollout function and the router's automatic rollback use), checked against the
residency policy and audited as the CLI's user. While ``falaj up`` runs, the
new split is announced with ``model.deployed`` like any other rollout, and the
router picks it up within a quarter of a second.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from falaj.auth import Role
from falaj.catalog import loop_steps
from falaj.cli.options import (
    HomeOption,
    JsonOption,
    ModelArgument,
    console,
    emit_json,
    err_console,
    fail,
    settings_for,
    user_token,
)
from falaj.context import Context, Paths
from falaj.errors import FalajError
from falaj.rollouts import RolloutAction, RolloutResult, RolloutStep, describe_split
from falaj.settings import Settings
from falaj.tls import client_verify

rollout_app = typer.Typer(
    help="Traffic rollouts: canary, A/B report, promote, rollback, shadow.",
    no_args_is_help=True,
)
ReasonOption = Annotated[str, typer.Option("--reason", help="why, for the audit log")]
#: The CloudEvent source and audit ``requested_by`` of what the CLI does.
CLI_SOURCE = "/falaj/cli"


# -- the steps ---------------------------------------------------------------------------


def _apply(home: Path | None, step: RolloutStep, as_json: bool) -> None:
    from falaj.context import Context
    from falaj.deployments import DeploymentStore
    from falaj.registry import ModelRegistry
    from falaj.rollouts import Rollouts

    settings = settings_for(home)
    try:
        ctx = Context.create(settings, actor=f"cli:{getpass.getuser()}")
        with DeploymentStore(ctx) as store:
            result = Rollouts(ctx, store, ModelRegistry(ctx)).apply(
                step, actor=ctx.actor, role="cli"
            )
    except FalajError as exc:
        raise fail(
            str(exc),
            hint=f"'falaj rollout status {step.model}' shows the split, 'falaj models list' "
            "the versions",
        ) from None
    announced = _announce(settings, result) if result.changed else None
    if as_json:
        emit_json(
            {
                "model": step.model,
                "action": str(step.action),
                "changed": result.changed,
                "before": describe_split(result.before),
                "after": describe_split(result.after),
                "announced": announced,
            }
        )
        return
    if not result.changed:
        console.print(f"{step.model}: unchanged, {describe_split(result.after)}")
        return
    before, after = describe_split(result.before), describe_split(result.after)
    console.print(f"{step.model}: {before} -> [bold]{after}[/bold]")
    if announced is False:
        err_console.print(
            "[yellow]note:[/yellow] the split is stored and audited, but the broker did not "
            "take the model.deployed announcement (is 'falaj up' running?)"
        )


def _announce(settings: Settings, result: RolloutResult) -> bool | None:
    """Announce the new split while the platform runs; None when it does not run here."""
    from falaj.events import EventType, make_event
    from falaj.publisher import EventPublisher
    from falaj.rollouts import deployed_event, deployed_subject

    try:
        token = user_token(Paths(settings.resolved_home), Role.SERVICE)
    except FalajError:
        return None  # no platform runs here
    event = make_event(
        EventType.MODEL_DEPLOYED,
        deployed_event(result.after, result.step),
        region=settings.region,
        source=CLI_SOURCE,
        subject=deployed_subject(result.after, result.step),
    )
    publisher = EventPublisher(
        settings.broker_ingress, token, timeout_s=5.0, verify=client_verify(settings)
    )
    try:
        publisher.publish(event)
    except FalajError:
        return False
    finally:
        publisher.close()
    return True


@rollout_app.command("canary")
def canary(
    model: ModelArgument,
    version: Annotated[
        int | None, typer.Argument(help="the version to canary (default: the current canary)")
    ] = None,
    percent: Annotated[
        int | None,
        typer.Option("--percent", "-p", min=0, max=100, help="its share of traffic"),
    ] = None,
    reason: ReasonOption = "",
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make a version the canary, or change the canary's share of traffic."""
    step = RolloutStep(
        model=model,
        action=RolloutAction.CANARY,
        version=version,
        percent=percent,
        reason=reason,
        requested_by=CLI_SOURCE,
    )
    _apply(home, step, as_json)


def _canary_step(action: RolloutAction, summary: str) -> None:
    """Register ``falaj rollout <action> MODEL``: a step on the current canary."""

    def command(
        model: ModelArgument,
        reason: ReasonOption = "",
        home: HomeOption = None,
        as_json: JsonOption = False,
    ) -> None:
        step = RolloutStep(model=model, action=action, reason=reason, requested_by=CLI_SOURCE)
        _apply(home, step, as_json)

    command.__doc__ = summary
    rollout_app.command(str(action))(command)


_canary_step(RolloutAction.PROMOTE, "The canary becomes the stable version and takes all traffic.")
_canary_step(
    RolloutAction.ROLLBACK, "The canary leaves; all traffic goes back to the stable version."
)


@rollout_app.command("shadow")
def shadow(
    model: ModelArgument,
    version: Annotated[int | None, typer.Argument(help="the version to mirror traffic to")] = None,
    off: Annotated[bool, typer.Option("--off", help="stop mirroring")] = False,
    reason: ReasonOption = "",
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Copy every request to a version whose answers are logged, never returned."""
    if (version is None) != off:
        raise fail(
            "expected a version to shadow, or --off to stop shadowing (not both)",
            hint=f"e.g. 'falaj rollout shadow {model} 4' or 'falaj rollout shadow {model} --off'",
        )
    step = RolloutStep(
        model=model,
        action=RolloutAction.SHADOW,
        version=version,
        reason=reason,
        requested_by=CLI_SOURCE,
    )
    _apply(home, step, as_json)


# -- status --------------------------------------------------------------------------------


def _live_report(settings: Settings, model: str) -> dict[str, Any] | None:
    """The router's A/B report and backend states, or None when no router answers."""
    import httpx

    try:
        token = user_token(Paths(settings.resolved_home), Role.VIEWER)
    except FalajError:
        return None  # no platform runs here
    url = f"{settings.router_url}/v2/models/{model}"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(timeout=5.0, headers=headers, verify=client_verify(settings)) as client:
            ab, metadata = client.get(f"{url}/ab"), client.get(url)
    except httpx.HTTPError:
        return None
    if ab.status_code != 200 or metadata.status_code != 200:
        return None
    return {**ab.json(), "status": metadata.json().get("status", {})}


def _pct(value: object) -> str:
    return "" if value is None else f"{float(value):.2%}"  # type: ignore[arg-type]


def _ms(value: object) -> str:
    return "" if value is None else f"{float(value):.2f}"  # type: ignore[arg-type]


@rollout_app.command("status")
def status(model: ModelArgument, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """The split, each variant's live metrics, and the canary's A/B tests against stable."""
    from falaj.deployments import DeploymentStore

    settings = settings_for(home)
    try:
        ctx = Context.create(settings, actor="cli")
        with DeploymentStore(ctx) as store:
            split = store.get(model)
    except FalajError as exc:
        raise fail(str(exc), hint="pass --home to the platform's folder") from None
    if split is None:
        raise fail(
            f"{model!r} has no traffic split; nothing of it is deployed",
            hint=f"'falaj rollout canary {model} VERSION' deploys a version (the rollout "
            "function deploys the first one); 'falaj models list' shows what is registered",
        )
    live = _live_report(settings, model)
    steps = loop_steps(ctx.audit, model)
    if as_json:
        emit_json(
            {
                "model": model,
                "split": {**split.traffic(), "updated": split.updated},
                "live": live,
                "loop": steps,
            }
        )
        return
    console.print(f"[bold]{model}[/bold]: {describe_split(split)} (since {split.updated[:19]})")
    if steps:
        loop = Table(title=f"the loop (last {len(steps)} steps)", title_justify="left")
        for column in ("time", "step", "version", "by", "why"):
            loop.add_column(column)
        for entry in steps:
            loop.add_row(
                entry["time"][:19], entry["step"], entry["version"], entry["by"], entry["why"]
            )
        console.print(loop)
    if live is None:
        console.print("  no router answers here: live metrics appear while 'falaj up' runs")
        return
    table = Table(title="variants", title_justify="left")
    for column in (
        "variant",
        "state",
        "requests",
        "5xx rate",
        "p50 ms",
        "p99 ms",
        "mean prediction",
        "accuracy (outcomes)",
    ):
        table.add_column(column)
    for name, metrics in live["variants"].items():
        version = name.split(" ")[0].lstrip("v")
        state = live["status"].get(version, {}).get("state", "")
        outcomes = metrics["outcomes"]
        table.add_row(
            name,
            str(state),
            str(metrics["requests"]),
            _pct(metrics["error_rate"]),
            _ms(metrics["latency_p50_ms"]),
            _ms(metrics["latency_p99_ms"]),
            _ms(metrics["predictions"]["mean"]),
            f"{_pct(outcomes['accuracy'])} ({outcomes['count']})",
        )
    console.print(table)
    comparison = live.get("comparison")
    if not comparison:
        return
    for label, test in comparison.items():
        if not test["enough_data"]:
            verdict = f"not enough data yet (n={test['n_a']}/{test['n_b']})"
        else:
            word = "significant" if test["significant"] else "not significant"
            verdict = (
                f"canary - stable = {test['difference']:+.4g}, p={test['p_value']:.3g} ({word}, "
                f"{test['test']}, n={test['n_a']}/{test['n_b']})"
            )
        console.print(f"  {label}: {verdict}")
