"""OIDC bearer tokens: a JWT from the enterprise identity provider becomes a ``Principal``.

On a cluster people and workloads sign in at the identity provider (Keycloak,
Entra ID, Okta, a Kubernetes service-account issuer), not at Falaj. Every
process verifies the JWT itself, with PyJWT, against the issuer's published
keys (JWKS, found through ``/.well-known/openid-configuration`` unless
``oidc_jwks_url`` names it): signature (asymmetric algorithms only, so a key
can never double as an HMAC secret), issuer, audience, expiry and not-before
with ``oidc_leeway_s`` of clock skew. Keys are cached and fetched again when a
token names a key id the cache does not hold (the provider rotated), at most
once per ``oidc_key_refresh_s``.

The role comes from one claim (``oidc_role_claim``, a string or a list):
mapped through ``oidc_role_map`` (identity-provider group -> Falaj role), or
taken as a Falaj role name when the map is empty. A token with several roles
acts as the most privileged one (``ROLE_PRECEDENCE``); one with none is refused.

No error message quotes the token: it may be a real credential sent to the
wrong place.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt

from falaj.auth import Principal, Role
from falaj.errors import AuthError, ConfigError

#: When a token carries several roles, it acts as the first of these it has.
ROLE_PRECEDENCE = (
    Role.PLATFORM_ADMIN,
    Role.ML_ENGINEER,
    Role.SERVICE,
    Role.DATA_SCIENTIST,
    Role.AUDITOR,
    Role.VIEWER,
)
#: Asymmetric only: with "HS256" allowed, a public key could be used as the HMAC secret.
ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")
FETCH_TIMEOUT_S = 5.0


@dataclass(frozen=True, kw_only=True)
class OidcConfig:
    issuer: str
    audience: str
    jwks_url: str | None = None
    role_claim: str = "roles"
    role_map: Mapping[str, str] = field(default_factory=dict)
    leeway_s: float = 60.0
    #: The least time between two JWKS fetches for a key id the cache lacks: a
    #: rotation is picked up, a flood of made-up key ids does not flood the issuer.
    key_refresh_s: float = 30.0

    def __post_init__(self) -> None:
        problems = []
        for name, role in self.role_map.items():
            if role not in set(Role):
                problems.append(f"{name}={role}: expected a role of {', '.join(Role)}")
        for name, url in (("issuer", self.issuer), ("jwks_url", self.jwks_url)):
            if url is not None and not _trusted_url(url):
                problems.append(f"{name} {url!r}: expected an https:// URL (http only on loopback)")
        if problems:
            raise ConfigError("OIDC settings: " + "; ".join(problems))


class OidcVerifier:
    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        self._keys: jwt.PyJWKClient | None = None

    @property
    def keys(self) -> jwt.PyJWKClient:
        if self._keys is None:
            url = self.config.jwks_url or _discover_jwks_url(self.config.issuer)
            self._keys = jwt.PyJWKClient(
                url,
                cache_keys=True,
                timeout=int(FETCH_TIMEOUT_S),
                cooldown_duration=self.config.key_refresh_s,
            )
        return self._keys

    def principal(self, token: str) -> Principal:
        """The verified caller of ``token``; ``AuthError`` says why a token is refused."""
        config = self.config
        try:
            key = self.keys.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=list(ALGORITHMS),
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_s,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("OIDC token expired; sign in again") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("OIDC token not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise AuthError(f"OIDC token is not for audience {config.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise AuthError(f"OIDC token was not issued by {config.issuer!r}") from None
        except jwt.PyJWKClientError as exc:
            raise AuthError(
                f"OIDC token's signing key not found at the issuer's JWKS: {exc}"
            ) from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"OIDC token refused: {type(exc).__name__}: {exc}") from None
        return Principal(subject=str(claims["sub"]), role=self._role(claims))

    def _role(self, claims: Mapping[str, Any]) -> Role:
        config = self.config
        raw = claims.get(config.role_claim)
        names: Sequence[Any] = (
            [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
        )
        mapped = {
            config.role_map.get(str(name), str(name) if not config.role_map else "")
            for name in names
        }
        for role in ROLE_PRECEDENCE:
            if str(role) in mapped:
                return role
        known = ", ".join(config.role_map) if config.role_map else ", ".join(Role)
        raise AuthError(
            f"OIDC token of {claims.get('sub')!r} has no Falaj role in claim "
            f"{config.role_claim!r}; expected one of {known}"
        )


def _trusted_url(url: str) -> bool:
    """https, or http to this machine (a test or a sidecar): keys must not come in the clear."""
    parsed = urllib.parse.urlsplit(url)
    loopback = parsed.hostname in ("localhost", "::1") or (parsed.hostname or "").startswith("127.")
    return parsed.scheme == "https" or (parsed.scheme == "http" and loopback)


def _discover_jwks_url(issuer: str) -> str:
    """The issuer's ``jwks_uri`` from its OpenID configuration document."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
            document = json.loads(response.read())
        jwks_url = str(document["jwks_uri"])
    except (OSError, ValueError, KeyError) as exc:
        raise AuthError(
            f"cannot read the OIDC configuration at {url} ({type(exc).__name__}); set "
            "FALAJ_OIDC_JWKS_URL to the issuer's JWKS"
        ) from None
    if not _trusted_url(jwks_url):
        raise AuthError(f"the issuer's jwks_uri {jwks_url!r} is not https; refusing its keys")
    return jwks_url
