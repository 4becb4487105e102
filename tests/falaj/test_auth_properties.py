"""Hostile Authorization headers, local tokens and JWT-shaped strings: a principal or a 401."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from falaj.auth import Principal, Role, TokenStore
from falaj.errors import AuthError
from falaj.oidc import OidcConfig, OidcVerifier
from falaj.runtime.processes import free_port
from tests.support.hostile import bounded

segment = st.text(alphabet=st.characters(codec="ascii"), max_size=40)
jwt_shaped = st.tuples(segment, segment, segment).map(".".join)
headers = st.one_of(
    st.none(),
    st.text(max_size=80),
    st.builds(lambda t: f"Bearer {t}", st.text(max_size=80)),
    st.builds(lambda t: f"Bearer {t}", jwt_shaped),
    st.builds(lambda s, t: f"{s} {t}", st.sampled_from(["bearer", "Basic", "BEARER"]), jwt_shaped),
)


@bounded
@given(header=headers)
def test_any_authorization_header_is_a_principal_or_a_clear_401(
    tmp_path_factory: pytest.TempPathFactory, header: str | None
) -> None:
    folder = tmp_path_factory.mktemp("tokens")
    store = TokenStore(
        folder / "tokens.json",
        # An issuer nobody answers at: JWT-shaped input must still end in an AuthError.
        jwt=OidcVerifier(
            OidcConfig(issuer=f"http://127.0.0.1:{free_port()}/idp", audience="falaj")
        ),
    )
    token = store.issue("alice", Role.VIEWER)
    assert store.authenticate(f"Bearer {token}") == Principal("alice", Role.VIEWER)
    try:
        principal = store.authenticate(header)
    except AuthError as exc:
        assert exc.status == 401
        # A refusal never echoes what was sent (a short string may occur by chance).
        sent = (header or "").partition(" ")[2].strip()
        assert len(sent) < 12 or sent not in str(exc)
        return
    assert principal == Principal("alice", Role.VIEWER)  # only the real token gets in
