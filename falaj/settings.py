"""Typed settings, read once in a process's ``main()`` and passed down.

Every field can be set by an environment variable ``FALAJ_<FIELD>`` (upper
case); tuples take comma-separated values. Handlers never read ``os.environ``:
they receive a ``Settings``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from falaj.errors import ConfigError
from falaj.feast_stores import parse_postgres_url, parse_redis_url
from falaj.off_peak import OffPeakWindow

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


#: Settings whose values never appear in an error (a URL's password is a secret too).
SECRET_SETTINGS = frozenset({"token", "rabbitmq_url", "online_store", "feature_registry"})


class Settings(BaseModel):
    """Everything a Falaj process needs to know about where it runs."""

    # hide_input_in_errors: a ValidationError's text would quote a secret's value
    # (a URL with its password); from_env quotes the values that are not secret.
    model_config = ConfigDict(
        frozen=True, extra="forbid", str_strip_whitespace=True, hide_input_in_errors=True
    )

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
    ray_token_file: Path | None = Field(
        default=None,
        description="the token the Ray head requires (Ray's token authentication, "
        "RAY_AUTH_MODE=token), in a file; falaj up writes <home>/keys/ray.token for the head it "
        "starts. Unset, the Ray head is taken to run without authentication",
    )
    token: SecretStr | None = Field(default=None, description="this process's bearer token")
    token_file: Path | None = Field(
        default=None, description="a file holding the bearer token (a mounted Secret)"
    )
    rabbitmq_url: SecretStr | None = Field(
        default=None,
        description="amqp://user:password@host:port/vhost the RabbitmqSource consumes from "
        "locally; unset, falaj up starts no RabbitMQ consumer",
    )
    online_store: SecretStr | None = Field(
        default=None,
        description="redis://[[user]:password@]host[:port][/db] (rediss:// for TLS) for Feast's "
        "online store; unset, SQLite under <home>/feast (falaj/feast_stores.py)",
    )
    feature_registry: SecretStr | None = Field(
        default=None,
        description="postgresql://user[:password]@host[:port]/database for Feast's SQL registry; "
        "unset, a file under <home>/feast (falaj/feast_stores.py)",
    )
    secrets_file: Path | None = Field(
        default=None,
        description="a file only its owner can read (a mounted Secret) of FALAJ_<NAME>=value "
        "lines, one per secret setting; a setting given directly wins over the file",
    )
    canary_percent: int = Field(default=10, ge=0, le=100, description="traffic to a new version")
    rollback_auto: bool = Field(
        default=True,
        description="whether the router rolls a canary back by itself when it is worse than "
        "the stable version (rollback_* settings)",
    )
    rollback_min_requests: int = Field(
        default=200,
        ge=30,
        description="requests each variant must have served before the canary is judged",
    )
    rollback_error_rate_margin: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="how far (absolute) the canary's 5xx rate may exceed the stable's; beyond "
        "it, and significant by a two-proportion z-test, the canary is rolled back",
    )
    rollback_p99_margin_ms: float = Field(
        default=50.0,
        gt=0,
        description="how far (ms) the canary's p99 latency may exceed the stable's before it "
        "is rolled back",
    )
    canary_auto_promote: bool = Field(
        default=True,
        description="whether the router promotes a canary by itself once it is no worse than "
        "the stable version over rollback_min_requests requests and canary_min_outcomes "
        "outcomes (needs rollback_auto)",
    )
    canary_min_outcomes: int = Field(
        default=100,
        ge=0,
        description="outcomes (POST .../outcomes) each variant needs before the canary's "
        "accuracy is judged and it can be promoted; 0 promotes on errors and latency alone, "
        "for models whose outcomes never come back",
    )
    canary_accuracy_margin: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="how far (absolute) the canary's accuracy may fall below the stable's; "
        "beyond it, and significant by a two-proportion z-test, the canary is rolled back",
    )
    serving_idle_s: float = Field(
        default=300.0,
        ge=0,
        description="a model server with no request for this long stops (scale to zero; the "
        "next request starts it again); 0 keeps every server up",
    )
    serving_prewarm: bool = Field(
        default=True,
        description="keep one pre-imported model server waiting, so a start (scale from zero, "
        "a new canary) only loads its model: ~1.4 s sooner on two cores, for ~200 MB held",
    )
    serving_max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="the largest request body the router takes (413 beyond it)",
    )
    serving_activation_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="how long a request waits for a scaled-to-zero model server to start",
    )
    drift_window: int = Field(
        default=200,
        ge=50,
        description="inference rows per drift window: a window is scored when it holds this "
        "many (PSI noise ~ 9/n)",
    )
    drift_window_s: float = Field(
        default=0.0,
        ge=0,
        description="a window is also scored once its first row is this old (checked as events "
        "arrive), so slow traffic is judged too; 0 scores by count alone",
    )
    drift_min_samples: int = Field(
        default=100,
        ge=1,
        description="a window closed by time with fewer rows is scored and kept, but raises no "
        "alert: too few rows to tell drift from noise",
    )
    drift_thresholds: dict[str, float] = Field(
        default_factory=lambda: _default_drift_thresholds(),
        description="per statistic, where drift starts (NAME=VALUE[,NAME=VALUE]): psi, ks, "
        "wasserstein, jensen_shannon above it; chi_square's p-value below it. A statistic left "
        "out is still scored and shown, but decides nothing",
    )
    drift_cooldown_s: float = Field(default=60.0, ge=0, description="quiet time after an alert")
    training_workers: int = Field(default=2, ge=1, description="Ray Train workers per job")
    training_use_gpu: bool | None = Field(
        default=None,
        description="whether Ray Train workers use a GPU each; unset, the job looks for CUDA "
        "where its driver runs (on a cluster the launcher sets it from the worker pool)",
    )
    code_commit: str | None = Field(
        default=None,
        description="the commit of the code this image was built from (a build argument), "
        "recorded in a trained version's lineage; unset, git is asked",
    )
    cluster_namespace: str = Field(
        default="falaj",
        description="the Kubernetes namespace the platform's cluster paths work in (RayJobs, "
        "InferenceServices)",
    )
    serving_backend: Literal["local", "kserve"] = Field(
        default="local",
        description="where rollout steps are written: local (the deployment store the router "
        "reads) or kserve (the model's InferenceService, through the Kubernetes API of the "
        "pod's service account)",
    )
    training_backend: Literal["ray", "kuberay"] = Field(
        default="ray",
        description="where training jobs run: ray (the Ray Jobs API at ray_address) or kuberay "
        "(a RayJob per run, through the Kubernetes API of the pod's service account)",
    )
    training_max_concurrent: int = Field(
        default=1,
        ge=1,
        description="training jobs that may run at once for one model; more requests wait, "
        "merged into one",
    )
    training_off_peak: OffPeakWindow | None = Field(
        default=None,
        description="HH:MM-HH:MM in training_timezone when retraining that is not urgent (a "
        "schedule, mild drift) may start, e.g. 22:00-06:00; unset, any time",
    )
    training_timezone: str = Field(
        default="Asia/Dubai", description="the IANA time zone of training_off_peak"
    )
    training_urgent_psi: float = Field(
        default=0.5,
        gt=0,
        description="drift whose largest PSI reaches this retrains at once; milder drift "
        "waits for the off-peak window",
    )
    training_watch_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="how often the training launcher asks Ray about the jobs it started",
    )
    oidc_issuer: str | None = Field(
        default=None,
        description="the identity provider whose JWTs every endpoint accepts beside local "
        "tokens (its iss claim, e.g. https://login.example.ae/realms/falaj); unset, local "
        "tokens only",
    )
    oidc_audience: str | None = Field(
        default=None, description="the aud claim a JWT must carry (this platform's client id)"
    )
    oidc_jwks_url: str | None = Field(
        default=None,
        description="where the issuer publishes its keys; unset, found through its "
        "/.well-known/openid-configuration",
    )
    oidc_role_claim: str = Field(
        default="roles", description="the JWT claim (string or list) that names the caller's role"
    )
    oidc_role_map: dict[str, str] = Field(
        default_factory=dict,
        description="identity-provider group -> Falaj role (GROUP=ROLE[,GROUP=ROLE]); empty, "
        "the claim holds Falaj role names",
    )
    oidc_leeway_s: float = Field(
        default=60.0, ge=0, le=600, description="clock skew allowed on exp, nbf and iat"
    )
    oidc_key_refresh_s: float = Field(
        default=30.0,
        ge=0,
        description="the least time between two fetches of the issuer's keys for a key id "
        "not cached (a rotation is picked up; made-up key ids do not flood the issuer)",
    )
    tls_cert_file: Path | None = Field(
        default=None,
        description="PEM certificate (chain) every listener of the local platform serves "
        "(broker, functions, router, model servers, REST and gRPC); with tls_key_file. Unset, "
        "they listen in plain HTTP (on a cluster the mesh's mTLS encrypts instead)",
    )
    tls_key_file: Path | None = Field(
        default=None, description="the PEM private key of tls_cert_file"
    )
    tls_ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle the platform's clients trust for its own https URLs (a "
        "private CA); unset, the system's",
    )
    manifests_dir: Path = PROJECT_ROOT / "manifests" / "base"
    feature_repo: Path = PROJECT_ROOT / "feature_repo"
    records_dataset: str | None = Field(
        default=None,
        description="the dataset records from a queue (RabbitMQ, Kafka) are ingested into; "
        "unset, the feature repository's only dataset",
    )
    log_level: str = "info"

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("secrets_file") is not None:
            given = {name: value for name, value in data.items() if value is not None}
            data = {**read_secrets_file(Path(data["secrets_file"])), **given}
        return data

    @field_validator("allowed_regions")
    @classmethod
    def _regions_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("expected at least one allowed region, got none")
        return value

    @field_validator("drift_thresholds")
    @classmethod
    def _known_drift_statistics(cls, value: dict[str, float]) -> dict[str, float]:
        from falaj.drift_statistics import STATISTICS

        unknown = sorted(set(value) - set(STATISTICS))
        problems = (
            [f"unknown drift statistics {unknown}; expected some of {', '.join(STATISTICS)}"]
            if unknown
            else []
        )
        if not value:
            problems.append("expected at least one STATISTIC=VALUE; none would never alert")
        for name, threshold in value.items():
            if name in unknown:
                continue
            by_p = STATISTICS[name].decides_by_p_value
            if not math.isfinite(threshold) or threshold <= 0 or (by_p and threshold >= 1):
                expected = "a p-value between 0 and 1" if by_p else "a finite number above 0"
                problems.append(f"{name}: expected {expected}, got {threshold}")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _window_holds_the_minimum(self) -> Settings:
        if self.drift_min_samples > self.drift_window:
            raise ValueError(
                f"drift_min_samples ({self.drift_min_samples}) exceeds drift_window "
                f"({self.drift_window}): no window would ever alert; lower "
                "FALAJ_DRIFT_MIN_SAMPLES or raise FALAJ_DRIFT_WINDOW"
            )
        return self

    @model_validator(mode="after")
    def _certificate_with_its_key(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            given, missing = (
                ("FALAJ_TLS_CERT_FILE", "FALAJ_TLS_KEY_FILE")
                if self.tls_key_file is None
                else ("FALAJ_TLS_KEY_FILE", "FALAJ_TLS_CERT_FILE")
            )
            raise ValueError(f"{given} is set without {missing}: TLS needs both; set both or none")
        return self

    @field_validator("training_off_peak", mode="before")
    @classmethod
    def _off_peak_window(cls, value: Any) -> Any:
        return OffPeakWindow.parse(value) if isinstance(value, str) else value

    @field_validator("training_timezone")
    @classmethod
    def _training_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"expected an IANA time zone such as Asia/Dubai or UTC, got {value!r}"
            ) from None
        return value

    @property
    def training_zone(self) -> ZoneInfo:
        return ZoneInfo(self.training_timezone)

    @field_validator("online_store")
    @classmethod
    def _online_store_is_redis(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                parse_redis_url(value.get_secret_value())
            except ConfigError as exc:
                # pydantic collects a ValueError with the other fields' errors.
                raise ValueError(str(exc)) from None
        return value

    @field_validator("feature_registry")
    @classmethod
    def _feature_registry_is_postgres(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                parse_postgres_url(value.get_secret_value())
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @property
    def resolved_home(self) -> Path:
        return self.home.resolve()

    @property
    def scheme(self) -> str:
        """How this platform's own listeners are reached: https once certificates are set."""
        return "https" if self.tls_cert_file is not None else "http"

    @property
    def broker_ingress(self) -> str:
        return self.broker_url or f"{self.scheme}://{self.host}:{self.broker_port}"

    @property
    def router_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.router_port}"

    @property
    def control_url(self) -> str:
        """The control API and dashboard (``falaj.control``)."""
        return f"{self.scheme}://{self.host}:{self.control_port}"

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
            if field in _RENAMED:
                raise ConfigError(f"{key} was replaced: set {_RENAMED[field]} instead")
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
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
                # A secret's value is never quoted back, not even when it is wrong.
                + (
                    ""
                    if err["loc"][:1] and err["loc"][0] in SECRET_SETTINGS
                    else f" (got {err.get('input')!r})"
                )
                for err in exc.errors()
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


def read_secrets_file(path: Path) -> dict[str, str]:
    """The secret settings of a ``FALAJ_<NAME>=value`` file, by setting name.

    No error quotes a line: any of them may hold a password.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"{ENV_PREFIX}SECRETS_FILE={path} cannot be read: {exc.strerror}"
        ) from None
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        name = key.strip()[len(ENV_PREFIX) :].lower() if key.strip().startswith(ENV_PREFIX) else ""
        if not sep or name not in SECRET_SETTINGS:
            raise ConfigError(
                f"{path}, line {number}: expected FALAJ_<NAME>=value with NAME one of "
                + ", ".join(sorted(n.upper() for n in SECRET_SETTINGS))
                + (f"; got the key {key.strip()!r}" if sep else "; got no '='")
            )
        found[name] = value.strip()
    return found


def write_secrets_file(path: Path, settings: Settings, names: Iterable[str]) -> bool:
    """Write ``names``' values (those set) to a file only its owner can read.

    False, and no file, when none of them is set.
    """
    lines = []
    for name in names:
        value = getattr(settings, name)
        if value is not None:
            lines.append(f"{ENV_PREFIX}{name.upper()}={value.get_secret_value()}\n")
    if not lines:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as handle:
        handle.writelines(lines)
    return True


def _default_drift_thresholds() -> dict[str, float]:
    # Imported here: the statistics own their defaults, and settings load first.
    from falaj.drift_statistics import DEFAULT_THRESHOLDS

    return dict(DEFAULT_THRESHOLDS)


#: Settings that were replaced, and what replaces them.
_RENAMED = {"drift_psi_threshold": "FALAJ_DRIFT_THRESHOLDS=psi=<value>[,...]"}
#: Settings written as KEY=VALUE[,KEY=VALUE], and what their keys are.
_PAIR_SETTINGS = {
    "storage_regions": "PREFIX=REGION",
    "drift_thresholds": "STATISTIC=VALUE",
    "oidc_role_map": "GROUP=ROLE",
}


def _parse_env_value(field: str, raw: str) -> Any:
    if field == "allowed_regions":
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if field in _PAIR_SETTINGS:
        pairs = [part.split("=", 1) for part in raw.split(",") if part.strip()]
        keys = [p[0].strip() for p in pairs]
        if any(len(p) != 2 for p in pairs) or len(set(keys)) != len(keys):
            shape = _PAIR_SETTINGS[field]
            raise ConfigError(
                f"{ENV_PREFIX}{field.upper()}: expected {shape}[,{shape}], each key once, "
                f"got {raw!r}"
            )
        return {key.strip(): value.strip() for key, value in pairs}
    return raw
