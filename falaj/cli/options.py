"""What every ``falaj`` command shares: its options, its settings, how it fails.

Output has two readers. A person gets tables, progress bars and errors with a
hint; a script passes ``--json`` and gets JSON alone on stdout, bars off, and
each error as one JSON object on stderr::

    {"error": "no platform is running in /srv/.falaj", "hint": "start one with 'falaj up'"}

with a non-zero exit status. A command raises ``fail(message, hint=...)``;
the root group (``FalajGroup``) prints it in the form the command line asked
for, so no command decides that for itself, and no error leaves without
saying what to do next.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from typer.core import TyperGroup

from falaj.auth import Role
from falaj.context import Paths
from falaj.errors import FalajError
from falaj.settings import Settings

if TYPE_CHECKING:
    # typer's own copy of click: the Context its groups are typed with.
    from typer._click.core import Context as ClickContext

console = Console()
err_console = Console(stderr=True)

#: The flag of machine-readable output, the same on every command.
JSON_FLAG = "--json"
#: Where the root group keeps whether the command line asked for JSON.
_JSON_META = "falaj.json"


class CommandFailed(typer.Exit):
    """Raised (through ``fail``) when a command cannot do what was asked.

    It carries what went wrong and what to do about it; ``FalajGroup`` prints
    both, as text or as JSON, and exits with ``exit_code``.
    """

    def __init__(self, message: str, hint: str, code: int = 1) -> None:
        super().__init__(code)
        self.message = message
        self.hint = hint

    def to_json(self) -> dict[str, str]:
        return {"error": self.message, "hint": self.hint}


def fail(message: str, *, hint: str, code: int = 1) -> CommandFailed:
    """The error to raise: what went wrong, and the next step that fixes it."""
    return CommandFailed(message, hint, code)


def show_error(message: str, hint: str, *, as_json: bool) -> None:
    """An error on stderr: one JSON object for a script, two lines for a person."""
    if as_json:
        err_console.file.write(json.dumps({"error": message, "hint": hint}) + "\n")
        return
    err_console.print(f"[red]error:[/red] {escape(message)}")
    err_console.print(f"[dim]hint:[/dim] {escape(hint)}")


class FalajGroup(TyperGroup):
    """The root group: every failure of a command or of its command line, shown one way.

    With ``--json`` anywhere on the command line, a usage error (an unknown
    option, a missing argument) is JSON too: a script never has to parse help text.
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: ClickContext | None = None,
        **extra: Any,
    ) -> Any:
        as_json = JSON_FLAG in args
        try:
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        except typer.TyperException as exc:
            raise _shown(exc, as_json) from None
        ctx.meta[_JSON_META] = as_json
        return ctx

    def invoke(self, ctx: ClickContext) -> Any:
        as_json = bool(ctx.meta.get(_JSON_META))
        try:
            return super().invoke(ctx)
        except CommandFailed as exc:
            show_error(exc.message, exc.hint, as_json=as_json)
            raise typer.Exit(exc.exit_code) from None
        except typer.TyperException as exc:
            raise _shown(exc, as_json) from None


def _shown(exc: typer.TyperException, as_json: bool) -> BaseException:
    """A usage error: as JSON it is printed here; otherwise typer prints it as it does."""
    if not as_json:
        return exc
    show_error(
        exc.format_message(),
        "run the command with --help for its arguments and options",
        as_json=True,
    )
    return typer.Exit(getattr(exc, "exit_code", 2))


def emit_json(data: object, *, one_line: bool = False) -> None:
    """The command's result on stdout, the one thing there under ``--json``.

    ``one_line`` for a command that goes on running (``falaj up``): a script
    reads one line and has the whole object.
    """
    if one_line:
        console.file.write(json.dumps(data, default=str) + "\n")
        console.file.flush()
        return
    console.print_json(json.dumps(data, default=str))


def bars(*columns: ProgressColumn | str, as_json: bool, transient: bool = False) -> Progress:
    """Progress bars on stderr, shown only to a person at a terminal.

    Off under ``--json`` and when stderr is not a terminal (a pipe, a CI log),
    so a script's output stays what it asked for; stdout is never touched.
    """
    return Progress(
        *columns,
        console=err_console,
        transient=transient,
        disable=as_json or not err_console.is_terminal,
    )


def counted_bars(*, as_json: bool, transient: bool = False) -> Progress:
    """``bars`` for work counted in steps: what it does, a bar, N of M, the time it took."""
    return bars(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        as_json=as_json,
        transient=transient,
    )


HomeOption = Annotated[
    Path | None, typer.Option("--home", help="state folder (default .falaj, or FALAJ_HOME)")
]
JsonOption = Annotated[
    bool,
    typer.Option(
        JSON_FLAG, help="machine-readable output: JSON alone on stdout, errors as JSON on stderr"
    ),
]


def complete_model(ctx: typer.Context, incomplete: str) -> list[str]:
    """Model names for shell completion: the registry's, under ``--home`` or the default home.

    It only lists folders: completing a word must never create a key or a log.
    """
    from falaj.registry import registered_models

    home = ctx.params.get("home")
    try:
        settings = settings_for(home if isinstance(home, Path) else None)
    except CommandFailed:
        return []
    names = registered_models(Paths(settings.resolved_home).registry)
    return [name for name in names if name.startswith(incomplete)]


ModelArgument = Annotated[
    str,
    typer.Argument(help="the model's name, e.g. fraud", autocompletion=complete_model),
]
OptionalModelArgument = Annotated[
    str | None,
    typer.Argument(help="one model (default: all)", autocompletion=complete_model),
]


def settings_for(home: Path | None) -> Settings:
    overrides = {"home": home} if home is not None else {}
    try:
        return Settings.from_env(os.environ, **overrides)
    except FalajError as exc:
        raise fail(
            str(exc), hint="fix or unset the FALAJ_* variable it names, then run this again"
        ) from None


def user_token(paths: Paths, role: Role) -> str:
    """The token ``falaj up`` wrote for ``role``; ``FalajError`` when there is none."""
    path = paths.keys / f"{role}.token"
    if not path.exists():
        raise FalajError(f"no {role} token at {path}; is 'falaj up' running in this folder?")
    return path.read_text().strip()


#: The hint when a command needs the running platform and cannot reach it.
PLATFORM_HINT = (
    "start the platform with 'falaj up' (or pass --home to the folder it runs in); "
    "'falaj status' shows what runs and what is down"
)


#: What a request to the running platform raises: a refusal it answered, or no answer at all.
PLATFORM_ERRORS = (FalajError, httpx.HTTPError)


def unreachable(exc: Exception) -> CommandFailed:
    """The error of a request to the platform that failed: its refusal, or its silence."""
    if isinstance(exc, httpx.HTTPError):
        return fail(f"the platform did not answer: {exc}", hint=PLATFORM_HINT)
    return fail(str(exc), hint=PLATFORM_HINT)


def platform_state(home: Path) -> dict[str, Any]:
    """``<home>/run/platform.json``, written by ``falaj up``; fails naming the fix."""
    state_file = Paths(home).run / "platform.json"
    try:
        state: dict[str, Any] = json.loads(state_file.read_text())
    except FileNotFoundError:
        raise fail(
            f"no running platform recorded in {state_file}",
            hint="start it with 'falaj up', or pass --home to the folder it runs in",
        ) from None
    except (OSError, ValueError) as exc:
        raise fail(
            f"cannot read {state_file}: {exc}",
            hint="if no 'falaj up' runs here, delete the file and start it again",
        ) from None
    return state
