"""OIDC JWTs from an identity provider: verified against its JWKS, mapped to a Falaj role."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from falaj.auth import Principal, Role
from falaj.context import Context
from falaj.errors import AuthError, ConfigError
from falaj.settings import Settings
from tests.support.identity_provider import AUDIENCE, IdentityProvider, serve_identity_provider


@pytest.fixture
def provider() -> Iterator[IdentityProvider]:
    yield from serve_identity_provider()


@pytest.fixture
def settings(tmp_path: Path, provider: IdentityProvider) -> Settings:
    return Settings(
        home=tmp_path / ".falaj",
        oidc_issuer=provider.issuer,
        oidc_audience=AUDIENCE,
        oidc_leeway_s=30.0,
        oidc_key_refresh_s=0.0,
    )


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_a_valid_token_is_its_subject_with_its_role(
    ctx: Context, provider: IdentityProvider
) -> None:
    principal = ctx.tokens.authenticate(bearer(provider.token()))
    assert principal == Principal("alice@example.ae", Role.ML_ENGINEER)
    # Local tokens keep working beside OIDC.
    local = ctx.tokens.issue("ci", Role.SERVICE)
    assert ctx.tokens.authenticate(bearer(local)).role is Role.SERVICE


def test_groups_map_to_roles_and_the_most_privileged_wins(
    tmp_path: Path, provider: IdentityProvider
) -> None:
    settings = Settings.from_env(
        {
            "FALAJ_OIDC_ISSUER": provider.issuer,
            "FALAJ_OIDC_AUDIENCE": AUDIENCE,
            "FALAJ_OIDC_ROLE_CLAIM": "groups",
            "FALAJ_OIDC_ROLE_MAP": "risk-analysts=data-scientist,ml-platform=platform-admin",
        },
        home=tmp_path / ".falaj",
    )
    tokens = Context.create(settings, actor="test").tokens
    analyst = provider.token(groups=["risk-analysts", "everyone"])
    assert tokens.authenticate(bearer(analyst)).role is Role.DATA_SCIENTIST
    both = provider.token(groups=["risk-analysts", "ml-platform"])
    assert tokens.authenticate(bearer(both)).role is Role.PLATFORM_ADMIN
    with pytest.raises(AuthError, match="no Falaj role in claim 'groups'"):
        tokens.authenticate(bearer(provider.token(groups=["everyone"])))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.token(lifetime_s=60, issued_ago_s=200), "expired"),
        (lambda p: p.token(aud="someone-else"), "not for audience 'falaj-platform'"),
        (lambda p: p.token(iss="https://evil.example"), "was not issued by"),
        (lambda p: p.token(sub=None), "Missing"),
        (lambda p: p.token(roles=[]), "no Falaj role"),
        (lambda p: p.token(roles=["superuser"]), "no Falaj role"),
        (lambda p: p.token(kid="k9", key=p.keys["k1"]), "signing key not found"),
        (lambda p: p.token(iat=None), "Missing"),
    ],
    ids=["expired", "audience", "issuer", "no-subject", "no-role", "unknown-role", "kid", "no-iat"],
)
def test_refusals_say_why_and_never_quote_the_token(
    ctx: Context, provider: IdentityProvider, make: object, message: str
) -> None:
    token = make(provider)  # type: ignore[operator]
    with pytest.raises(AuthError, match=message) as refused:
        ctx.tokens.authenticate(bearer(token))
    assert token not in str(refused.value)
    assert token.split(".")[2] not in str(refused.value)


def test_forged_signatures_and_algorithm_tricks_are_refused(
    ctx: Context, provider: IdentityProvider
) -> None:
    forger = IdentityProvider(issuer=provider.issuer)
    forged = forger.token(key=forger.add_key("other"), kid="k1")  # the right kid, the wrong key
    with pytest.raises(AuthError, match="InvalidSignatureError"):
        ctx.tokens.authenticate(bearer(forged))
    claims = jwt.decode(provider.token(), options={"verify_signature": False})
    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": "k1"})
    with pytest.raises(AuthError, match="refused"):
        ctx.tokens.authenticate(bearer(unsigned))
    # The public key as an HMAC secret ("alg confusion"): only asymmetric algorithms count.
    public_pem = (
        provider.keys["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    payload = provider.token().split(".")[1]
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","kid":"k1","typ":"JWT"}').decode()
    mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    confused = f"{header}.{payload}.{jwt.utils.base64url_encode(mac).decode()}"
    with pytest.raises(AuthError, match="refused"):
        ctx.tokens.authenticate(bearer(confused))


def test_clock_skew_within_the_leeway_is_accepted(ctx: Context, provider: IdentityProvider) -> None:
    # Expired 20 s ago, leeway 30 s: a skewed clock, not a stale token.
    assert ctx.tokens.authenticate(bearer(provider.token(lifetime_s=10, issued_ago_s=30)))


def test_a_rotated_key_is_fetched_when_a_token_names_it(
    ctx: Context, provider: IdentityProvider
) -> None:
    assert ctx.tokens.authenticate(bearer(provider.token()))  # keys cached now
    provider.add_key("k2")
    assert ctx.tokens.authenticate(bearer(provider.token(kid="k2"))).subject == "alice@example.ae"


def test_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="without FALAJ_OIDC_AUDIENCE"):
        Context.create(Settings(home=tmp_path, oidc_issuer="https://idp.example.ae"), actor="t")
    with pytest.raises(ConfigError, match="expected an https:// URL"):
        Context.create(
            Settings(home=tmp_path, oidc_issuer="http://idp.example.ae", oidc_audience="a"),
            actor="t",
        )
    with pytest.raises(ConfigError, match="admins=root: expected a role of"):
        Context.create(
            Settings(
                home=tmp_path,
                oidc_issuer="https://idp.example.ae",
                oidc_audience="a",
                oidc_role_map={"admins": "root"},
            ),
            actor="t",
        )


def test_an_unreachable_provider_is_a_clear_refusal(tmp_path: Path) -> None:
    from falaj.runtime.processes import free_port

    issuer = f"http://127.0.0.1:{free_port()}/realms/gone"
    tokens = Context.create(
        Settings(home=tmp_path, oidc_issuer=issuer, oidc_audience=AUDIENCE), actor="t"
    ).tokens
    token = jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256")
    with pytest.raises(AuthError, match="cannot read the OIDC configuration"):
        tokens.authenticate(bearer(token))
