"""Dashboard sessions: expiry, the bound on how many are kept, and the CSRF check."""

from __future__ import annotations

import pytest

from falaj.control import sessions as sessions_module
from falaj.control.sessions import Sessions, csrf_matches


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_lasts_its_ttl_and_no_longer() -> None:
    clock = Clock()
    sessions = Sessions(ttl_s=60, clock=clock)
    session_id, session = sessions.open("flj_token")
    assert sessions.get(session_id) == session
    clock.now += 59.9
    assert sessions.get(session_id) == session
    clock.now += 0.2
    assert sessions.get(session_id) is None
    assert sessions.get(None) is None and sessions.get("") is None


def test_each_session_has_its_own_unguessable_id_and_csrf_token() -> None:
    sessions = Sessions()
    opened = [sessions.open("flj_same") for _ in range(50)]
    ids = {session_id for session_id, _ in opened}
    csrfs = {session.csrf for _, session in opened}
    assert len(ids) == len(csrfs) == 50
    assert all(len(session_id) >= 43 for session_id in ids)  # 32 random bytes
    _, session = opened[0]
    assert csrf_matches(session, session.csrf)
    assert not csrf_matches(session, None)
    assert not csrf_matches(session, opened[1][1].csrf)


def test_the_oldest_session_goes_when_too_many_are_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions_module, "MAX_SESSIONS", 3)
    sessions = Sessions()
    first, _ = sessions.open("a")
    rest = [sessions.open(t)[0] for t in ("b", "c", "d")]
    assert sessions.get(first) is None
    assert all(sessions.get(session_id) is not None for session_id in rest)


def test_closing_a_session_ends_it() -> None:
    sessions = Sessions()
    session_id, _ = sessions.open("flj_token")
    sessions.close(session_id)
    sessions.close(session_id)  # twice is harmless
    assert sessions.get(session_id) is None
