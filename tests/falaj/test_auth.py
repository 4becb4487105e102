from __future__ import annotations

import stat
from pathlib import Path

import pytest

from falaj.auth import PERMISSIONS, Action, Role, TokenStore
from falaj.errors import AuthError, PermissionDenied


def test_issued_token_authenticates_and_only_its_digest_is_stored(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token = store.issue("alice", Role.ML_ENGINEER)
    principal = store.authenticate(f"Bearer {token}")
    assert (principal.subject, principal.role) == ("alice", Role.ML_ENGINEER)
    assert token not in store.path.read_text()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer nope"])
def test_missing_or_unknown_tokens_are_refused(tmp_path: Path, header: str | None) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    store.issue("alice", Role.VIEWER)
    with pytest.raises(AuthError) as error:
        store.authenticate(header)
    assert "nope" not in str(error.value)


@pytest.mark.parametrize(("role", "action"), [(r, a) for r in Role for a in Action])
def test_permission_table(tmp_path: Path, role: Role, action: Action) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    principal = store.authenticate("Bearer " + store.issue("x", role))
    if action in PERMISSIONS[role]:
        principal.require(action)
    else:
        with pytest.raises(PermissionDenied, match=str(action)):
            principal.require(action)


def test_viewer_cannot_deploy_but_admin_can(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    viewer = store.authenticate("Bearer " + store.issue("v", Role.VIEWER))
    admin = store.authenticate("Bearer " + store.issue("a", Role.PLATFORM_ADMIN))
    with pytest.raises(PermissionDenied):
        viewer.require(Action.DEPLOY)
    admin.require(Action.DEPLOY)


def test_the_readme_access_table_is_the_permissions_the_code_enforces() -> None:
    from falaj.settings import PROJECT_ROOT

    lines = (PROJECT_ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("| role |"))
    header = [cell.strip().strip("`") for cell in lines[start].strip().strip("|").split("|")]
    table: dict[str, set[str]] = {}
    for line in lines[start + 2 :]:
        if not line.strip().startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        table[cells[0].strip("`")] = {a for a, c in zip(header[1:], cells[1:], strict=True) if c}
    assert header[1:] == [str(a) for a in Action]
    assert table == {str(r): {str(a) for a in actions} for r, actions in PERMISSIONS.items()}
