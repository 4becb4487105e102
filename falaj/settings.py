"""Typed settings, read once in a process's ``main()`` and passed down.

Every field can be set by an environment variable ``FALAJ_<FIELD>`` (upper
case); tuples take comma-separated values. Handlers never read ``os.environ``:
they receive a ``Settings``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from falaj.errors import ConfigError

ENV_PREFIX = "FALAJ_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The UAE regions of the public clouds Falaj is deployed on: AWS UAE,
# Azure UAE North (Dubai) and UAE Central (Abu Dhabi), Oracle Abu Dhabi / Dubai.
UAE_REGIONS: tuple[str, ...] = (
    "me-central-1",
    "uaenorth",
    "uaecentral",
    "me-abudhabi-1",
    "me-dubai-1",
)


class Settings(BaseModel):
    """Everything a Falaj process needs to know about where it runs."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    home: Path = Field(default=Path(".falaj"), description="state of a local platform")
    region: str = Field(default="me-central-1", description="the region this process runs in")
    allowed_regions: tuple[str, ...] = Field(default=UAE_REGIONS)
    storage_regions: Mapping[str, str] = Field(
        default_factory=dict,
        description="region of each remote storage prefix, e.g. {'s3://bank-raw': 'me-central-1'}",
    )
    host: str = "127.0.0.1"
    broker_port: int = Field(default=8080, ge=1, le=65535)
    router_port: int = Field(default=8081, ge=1, le=65535)
    grpc_port: int = Field(default=8082, ge=1, le=65535)
    control_port: int = Field(default=8090, ge=1, le=65535)
    ray_dashboard_port: int = Field(default=8265, ge=1, le=65535)
    broker_url: str | None = Field(default=None, description="defaults to http://host:broker_port")
    ray_address: str | None = Field(
        default=None, description="defaults to http://host:ray_dashboard_port"
    )
    token: SecretStr | None = Field(default=None, description="this process's bearer token")
    token_file: Path | None = Field(
        default=None, description="a file holding the bearer token (a mounted Secret)"
    )
    canary_percent: int = Field(default=10, ge=0, le=100, description="traffic to a new version")
    drift_window: int = Field(
        default=200, ge=50, description="inference rows per drift window (PSI noise ~ 9/n)"
    )
    drift_psi_threshold: float = Field(default=0.2, gt=0, description="PSI that counts as drift")
    drift_cooldown_s: float = Field(default=60.0, ge=0, description="quiet time after an alert")
    training_workers: int = Field(default=2, ge=1, description="Ray Train workers per job")
    manifests_dir: Path = PROJECT_ROOT / "manifests" / "base"
    feature_repo: Path = PROJECT_ROOT / "feature_repo"
    log_level: str = "info"

    @field_validator("allowed_regions")
    @classmethod
    def _regions_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("expected at least one allowed region, got none")
        return value

    @property
    def resolved_home(self) -> Path:
        return self.home.resolve()

    @property
    def broker_ingress(self) -> str:
        return self.broker_url or f"http://{self.host}:{self.broker_port}"

    @property
    def ray_jobs_address(self) -> str:
        return self.ray_address or f"http://{self.host}:{self.ray_dashboard_port}"

    def bearer_token(self) -> str | None:
        """The token this process presents, from the setting or its file."""
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is not None:
            try:
                return self.token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"FALAJ_TOKEN_FILE={self.token_file} cannot be read: {exc.strerror}"
                ) from None
        return None

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from ``FALAJ_*`` variables; explicit overrides win."""
        values: dict[str, Any] = {}
        known = set(cls.model_fields)
        for key, raw in environ.items():
            if not key.startswith(ENV_PREFIX):
                continue
            field = key[len(ENV_PREFIX) :].lower()
            if field not in known:
                # A misspelt variable silently ignored is a week of debugging.
                raise ConfigError(
                    f"{key} is not a Falaj setting; expected one of "
                    + ", ".join(ENV_PREFIX + name.upper() for name in sorted(known))
                )
            values[field] = _parse_env_value(field, raw)
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = (
                "; ".join(
                    f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
                    f" (got {err.get('input')!r})"
                    for err in exc.errors()
                    if err["loc"] and err["loc"][0] != "token"
                )
                or "invalid token"
            )
            raise ConfigError(f"invalid settings: {problems}") from None

    def to_env(self) -> dict[str, str]:
        """The ``FALAJ_*`` variables that rebuild these settings in a child process."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, Mapping):
                value = ",".join(f"{k}={v}" for k, v in value.items())
            elif isinstance(value, Path):
                value = str(value.resolve())
            env[ENV_PREFIX + name.upper()] = str(value)
        return env


def _parse_env_value(field: str, raw: str) -> Any:
    if field == "allowed_regions":
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if field == "storage_regions":
        pairs = [part.split("=", 1) for part in raw.split(",") if part.strip()]
        bad = [p for p in pairs if len(p) != 2]
        if bad:
            raise ConfigError(
                f"{ENV_PREFIX}STORAGE_REGIONS: expected PREFIX=REGION[,PREFIX=REGION], got {raw!r}"
            )
        return {prefix.strip(): region.strip() for prefix, region in pairs}
    return raw
