"""What every command shares: errors that name the fix, as JSON for scripts; completion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from falaj.cli.main import app
from falaj.context import Context
from falaj.settings import Settings
from tests.support.models import WEIGHTS_V1, register

runner = CliRunner()


def test_an_error_is_one_json_object_on_stderr_under_json(tmp_path: Path) -> None:
    home = tmp_path / ".falaj"
    result = runner.invoke(app, ["status", "--home", str(home), "--json"])
    assert result.exit_code == 1
    assert result.stdout == ""  # a script's stdout holds results only
    error = json.loads(result.stderr)
    assert error == {
        "error": f"no running platform recorded in {home.resolve()}/run/platform.json",
        "hint": "start it with 'falaj up', or pass --home to the folder it runs in",
    }


def test_without_json_an_error_says_what_went_wrong_and_what_to_do(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["status", "--home", str(tmp_path / ".falaj")], env={"COLUMNS": "300"}
    )
    assert result.exit_code == 1 and result.stdout == ""
    first, second = result.stderr.splitlines()
    assert first.startswith("error: no running platform recorded in ")
    assert second == "hint: start it with 'falaj up', or pass --home to the folder it runs in"


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["models", "show", "--json"], "Missing argument 'MODEL'."),
        (["nonsense", "--json"], "No such command 'nonsense'."),
        (["models", "list", "--json", "--colour"], "No such option: --colour"),
    ],
)
def test_usage_errors_are_json_too_when_json_is_asked(argv: list[str], error: str) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and result.stdout == ""
    shown = json.loads(result.stderr)
    assert shown["error"].lower().startswith(error.lower().rstrip("."))
    assert "--help" in shown["hint"]


def test_completion_can_be_installed_for_the_shell() -> None:
    shown = runner.invoke(app, ["--show-completion", "bash"], prog_name="falaj")
    assert shown.exit_code == 0, shown.output
    assert "_FALAJ_COMPLETE=complete_bash" in shown.stdout
    assert "complete -o default -F _falaj_completion falaj" in shown.stdout


def _complete(words: str, env: dict[str, str] | None = None, shell: str = "bash") -> list[str]:
    """What the shell offers for the last word of ``words``, through typer's protocol."""
    said = words.split(" ")
    result = runner.invoke(
        app,
        [],
        prog_name="falaj",
        env={
            "_FALAJ_COMPLETE": f"complete_{shell}",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(said) - 1),
            "_TYPER_COMPLETE_ARGS": words,
            **(env or {}),
        },
    )
    assert result.exit_code == 0, result.output
    return [line for line in result.stdout.splitlines() if line]


def test_model_names_complete_from_the_registry_of_the_home(tmp_path: Path) -> None:
    home = tmp_path / ".falaj"
    ctx = Context.create(Settings(home=home), actor="test")
    register(ctx, WEIGHTS_V1)  # fraud, version 1
    (home / "registry" / "folder-without-versions").mkdir()

    assert _complete(f"falaj models show --home {home} f") == ["fraud"]
    assert _complete(f"falaj rollout status --home {home} x") == []
    # FALAJ_HOME names the home when --home does not.
    assert _complete("falaj drift status ", env={"FALAJ_HOME": str(home)}) == ["fraud"]
    assert _complete("falaj train status fr", env={"FALAJ_HOME": str(home)}) == ["fraud"]
    assert _complete(f"falaj predict {{}} --home {home} --model f") == ["fraud"]
    zsh = _complete(f"falaj lineage --home {home} f", shell="zsh")
    assert any('"fraud"' in line for line in zsh), zsh


def test_completing_a_name_creates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "nothing-here"
    assert _complete(f"falaj models show --home {home} f") == []
    assert not home.exists()
