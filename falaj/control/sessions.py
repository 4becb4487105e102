"""Dashboard sessions: a browser logs in with a token once and then carries a cookie.

The cookie holds a random session id, never the token: the token stays in this
process's memory and is authenticated again on every request, so a revoked
token ends its sessions at once and every refusal is audited like any other.
A session also holds a CSRF token that every state-changing request from the
browser must echo in a header (the cookie alone, which a browser sends by
itself, never suffices).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

#: The cookie that names a session (HttpOnly, SameSite=Strict; Secure under TLS).
SESSION_COOKIE = "falaj_session"
#: The header a browser's POST must carry, equal to its session's CSRF token.
CSRF_HEADER = "x-csrf-token"
#: How long a session lasts without a new login: a working day.
SESSION_TTL_S = 8 * 3600.0
#: Sessions one process keeps at most; the oldest goes first (a login flood costs memory once).
MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class Session:
    token: str
    csrf: str
    expires: float


class Sessions:
    """Live sessions of one control API process."""

    def __init__(
        self, *, ttl_s: float = SESSION_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, token: str) -> tuple[str, Session]:
        """A new session for an authenticated ``token``: its id (the cookie) and itself."""
        session_id = secrets.token_urlsafe(32)
        session = Session(
            token=token, csrf=secrets.token_urlsafe(32), expires=self.clock() + self.ttl_s
        )
        with self._lock:
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[session_id] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of a cookie; None when there is none or it has expired."""
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires <= self.clock():
                del self._sessions[session_id]
                return None
        return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(session_id, None)


def csrf_matches(session: Session, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(session.csrf, sent)
