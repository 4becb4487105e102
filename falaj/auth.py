"""Bearer tokens and roles: who may do what.

Locally, ``falaj up`` issues one token per role for people and one per service;
only their SHA-256 digests are stored, so the token file leaks nothing. On a
cluster the same ``Principal`` comes from a verified OIDC JWT instead.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from falaj.errors import AuthError, PermissionDenied
from falaj.events import EventType


class Role(StrEnum):
    VIEWER = "viewer"
    DATA_SCIENTIST = "data-scientist"
    ML_ENGINEER = "ml-engineer"
    PLATFORM_ADMIN = "platform-admin"
    AUDITOR = "auditor"
    SERVICE = "service"  # a platform component talking to another


class Action(StrEnum):
    READ = "read"  # status, versions, metrics
    PREDICT = "predict"
    PUBLISH_EVENT = "publish-event"
    TRAIN = "train"
    DEPLOY = "deploy"  # canary, promote, rollback
    REPLAY = "replay"  # dead letters
    READ_AUDIT = "read-audit"
    ADMIN = "admin"  # tokens, policy


PERMISSIONS: dict[Role, frozenset[Action]] = {
    Role.VIEWER: frozenset({Action.READ}),
    Role.DATA_SCIENTIST: frozenset({Action.READ, Action.PREDICT, Action.TRAIN}),
    Role.ML_ENGINEER: frozenset(
        {Action.READ, Action.PREDICT, Action.TRAIN, Action.DEPLOY, Action.PUBLISH_EVENT}
    ),
    Role.PLATFORM_ADMIN: frozenset(Action),
    Role.AUDITOR: frozenset({Action.READ, Action.READ_AUDIT}),
    Role.SERVICE: frozenset(
        {Action.READ, Action.PREDICT, Action.PUBLISH_EVENT, Action.TRAIN, Action.DEPLOY}
    ),
}


#: Events that are requests for an action of their own: publishing one needs
#: that action, not ``publish-event`` (a data scientist may ask for training but
#: not announce ingested data; asking for a canary is a deployment).
REQUEST_EVENTS: dict[str, Action] = {
    EventType.TRAINING_REQUESTED: Action.TRAIN,
    EventType.ROLLOUT_REQUESTED: Action.DEPLOY,
}
#: Who may post to the broker's ingress at all (each event then needs its own).
PUBLISHING = frozenset({Action.PUBLISH_EVENT, *REQUEST_EVENTS.values()})


def action_to_publish(event_type: str) -> Action:
    """What publishing an event of ``event_type`` needs the caller's role to allow."""
    return REQUEST_EVENTS.get(event_type, Action.PUBLISH_EVENT)


@dataclass(frozen=True)
class Principal:
    subject: str
    role: Role

    def require_any(self, actions: frozenset[Action]) -> None:
        """Raise ``PermissionDenied`` unless the role allows one of ``actions``."""
        if not actions & PERMISSIONS[self.role]:
            raise PermissionDenied(
                f"{self.subject} ({self.role}) may not "
                + " or ".join(sorted(actions))
                + "; roles that may: "
                + ", ".join(r for r, acts in PERMISSIONS.items() if actions & acts),
                subject=self.subject,
                role=str(self.role),
            )

    def require(self, action: Action, *, what: str = "") -> None:
        """Raise ``PermissionDenied`` unless the role allows ``action`` (``what``: on what)."""
        if action not in PERMISSIONS[self.role]:
            raise PermissionDenied(
                f"{self.subject} ({self.role}) may not {action}{what}; roles that may: "
                + ", ".join(r for r, acts in PERMISSIONS.items() if action in acts),
                subject=self.subject,
                role=str(self.role),
            )


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class JwtVerifier(Protocol):
    def principal(self, token: str) -> Principal: ...


class TokenStore:
    """Token digests on disk, ``<home>/keys/tokens.json``; with ``jwt``, OIDC JWTs too."""

    def __init__(self, path: Path, *, jwt: JwtVerifier | None = None) -> None:
        self.path = path
        self.jwt = jwt
        # Every request authenticates: re-read the file only when it changed.
        self._cache: tuple[int, dict[str, dict[str, str]]] | None = None

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            mtime_ns = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        if self._cache is not None and self._cache[0] == mtime_ns:
            return self._cache[1]
        loaded: dict[str, dict[str, str]] = json.loads(self.path.read_text())
        self._cache = (mtime_ns, loaded)
        return loaded

    def _save(self, entries: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries, indent=1))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def issue(self, subject: str, role: Role) -> str:
        """Create a token for ``subject``; the token itself is returned once, never stored."""
        token = "flj_" + secrets.token_urlsafe(32)
        entries = dict(self._load())
        entries[_digest(token)] = {"subject": subject, "role": str(role)}
        self._save(entries)
        return token

    def holders(self) -> list[Principal]:
        """Who holds a token issued here (one entry per token), by subject."""
        return sorted(
            (
                Principal(subject=who["subject"], role=Role(who["role"]))
                for who in self._load().values()
            ),
            key=lambda principal: (principal.subject, principal.role),
        )

    def revoke(self, subject: str) -> int:
        """Withdraw every token of ``subject``; how many there were (0: none)."""
        entries = self._load()
        kept = {digest: who for digest, who in entries.items() if who["subject"] != subject}
        if len(kept) != len(entries):
            self._save(kept)
        return len(entries) - len(kept)

    def authenticate(self, authorization: str | None) -> Principal:
        """Resolve an ``Authorization: Bearer ...`` header to a principal."""
        if not authorization:
            raise AuthError("missing bearer token: send 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("expected 'Authorization: Bearer <token>', got another scheme")
        token = token.strip()
        # A JWT is three base64url parts; a token 'falaj up' issued has no dot.
        if self.jwt is not None and token.count(".") == 2:
            return self.jwt.principal(token)
        wanted = _digest(token)
        for known, who in self._load().items():
            if hmac.compare_digest(known, wanted):
                return Principal(subject=who["subject"], role=Role(who["role"]))
        # Never echo the token back: it may be a real secret sent to the wrong place.
        raise AuthError("unknown bearer token; use a token issued by 'falaj up' (.falaj/keys/)")


def write_token_file(path: Path, token: str) -> None:
    """Write a token to a file only its owner can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
