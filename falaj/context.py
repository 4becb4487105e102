"""Where a local platform keeps its state, and the objects every component shares.

A ``Context`` is built once in a process's ``main()`` from its ``Settings`` and
passed down: paths under ``.falaj/``, the audit log, the residency policy and
the token store. ``admit`` is the one gate every endpoint of every process
passes a caller through.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from falaj.audit import AuditLog, Outcome
from falaj.auth import Action, Principal, TokenStore
from falaj.errors import AuthError, ConfigError, PermissionDenied
from falaj.oidc import OidcConfig, OidcVerifier
from falaj.residency import ResidencyPolicy
from falaj.settings import Settings


@dataclass(frozen=True)
class Paths:
    """The layout of ``<home>``; one name per store, used everywhere."""

    home: Path

    @property
    def landing(self) -> Path:
        return self.home / "landing"

    @property
    def offline(self) -> Path:
        return self.home / "offline"

    @property
    def quarantine(self) -> Path:
        return self.home / "quarantine"

    @property
    def quality(self) -> Path:
        """Data-quality reports, one per ingested batch."""
        return self.home / "quality"

    @property
    def feast(self) -> Path:
        return self.home / "feast"

    @property
    def registry(self) -> Path:
        return self.home / "registry"

    @property
    def serving(self) -> Path:
        return self.home / "serving"

    @property
    def drift(self) -> Path:
        return self.home / "drift"

    @property
    def training(self) -> Path:
        return self.home / "training"

    @property
    def audit(self) -> Path:
        return self.home / "audit"

    @property
    def keys(self) -> Path:
        return self.home / "keys"

    @property
    def broker(self) -> Path:
        return self.home / "broker"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def state(self) -> Path:
        """Per-function state (idempotency keys, windows)."""
        return self.home / "state"

    @property
    def run(self) -> Path:
        """PID files and the addresses of running processes."""
        return self.home / "run"

    @property
    def tokens(self) -> Path:
        return self.keys / "tokens.json"


def oidc_verifier(settings: Settings) -> OidcVerifier | None:
    """The OIDC verifier the settings configure, or None (local tokens only)."""
    if settings.oidc_issuer is None:
        return None
    if settings.oidc_audience is None:
        raise ConfigError("FALAJ_OIDC_ISSUER is set without FALAJ_OIDC_AUDIENCE; set both")
    return OidcVerifier(
        OidcConfig(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            jwks_url=settings.oidc_jwks_url,
            role_claim=settings.oidc_role_claim,
            role_map=dict(settings.oidc_role_map),
            leeway_s=settings.oidc_leeway_s,
            key_refresh_s=settings.oidc_key_refresh_s,
        )
    )


@dataclass(frozen=True)
class Context:
    settings: Settings
    paths: Paths
    audit: AuditLog
    policy: ResidencyPolicy
    tokens: TokenStore
    actor: str

    @classmethod
    def create(cls, settings: Settings, *, actor: str) -> Context:
        paths = Paths(settings.resolved_home)
        audit = AuditLog(paths.audit)
        policy = ResidencyPolicy.from_settings(settings, audit=audit, actor=actor)
        return cls(
            settings=settings,
            paths=paths,
            audit=audit,
            policy=policy,
            tokens=TokenStore(paths.tokens, jwt=oidc_verifier(settings)),
            actor=actor,
        )

    def admit(self, authorization: str | None, action: Action, *, resource: str) -> Principal:
        """The caller behind an ``Authorization`` header, if its role may ``action``.

        Otherwise the ``AuthError`` (401 no or unknown token, 403 a role that may
        not) is audited by ``record_refusal`` and raised. An allowed request
        writes nothing: the hot path stays a digest and a cached lookup.
        """
        try:
            principal = self.tokens.authenticate(authorization)
            principal.require(action)
        except AuthError as exc:
            self.record_refusal(exc, resource=resource)
            raise
        return principal

    def record_refusal(self, exc: AuthError, *, resource: str) -> None:
        """Audit a refused caller (``auth.refused``): a login failure, or a role that may not.

        Async endpoints authenticate inline and call this in a thread, so a
        flood of bad tokens never blocks their event loop on the audit file.
        """
        actor, role = (
            (exc.subject, exc.role) if isinstance(exc, PermissionDenied) else ("unknown", "none")
        )
        self.audit.record(
            "auth.refused",
            actor=actor,
            role=role,
            resource=resource,
            region=self.settings.region,
            outcome=Outcome.REFUSED,
            details={"reason": str(exc)},
        )
