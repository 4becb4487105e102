"""What every ``falaj`` command shares: its options, its settings, how it fails."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from falaj.auth import Role
from falaj.context import Paths
from falaj.errors import FalajError
from falaj.settings import Settings

console = Console()
err_console = Console(stderr=True)

HomeOption = Annotated[
    Path | None, typer.Option("--home", help="state folder (default .falaj, or FALAJ_HOME)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output")]
ModelArgument = Annotated[str, typer.Argument(help="the model's name, e.g. fraud")]


def settings_for(home: Path | None) -> Settings:
    overrides = {"home": home} if home is not None else {}
    return Settings.from_env(os.environ, **overrides)


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def user_token(paths: Paths, role: Role) -> str:
    """The token ``falaj up`` wrote for ``role``; ``FalajError`` when there is none."""
    path = paths.keys / f"{role}.token"
    if not path.exists():
        raise FalajError(f"no {role} token at {path}; is 'falaj up' running in this folder?")
    return path.read_text().strip()
