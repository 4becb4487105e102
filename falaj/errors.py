"""Every error Falaj raises on purpose derives from one root.

    FalajError
    ├── ConfigError            a setting is missing or malformed
    ├── ResidencyViolation     a resource would leave the allowed regions
    ├── EventError             an event is malformed or not in the catalog
    ├── PublishError           the broker could not take an event (retry later)
    ├── AuthError              a caller is unknown (401) ...
    │   └── PermissionDenied   ... or known but not allowed (403)
    ├── AuditError             the audit log cannot be written
    │   └── AuditTampered      the hash chain does not verify
    ├── ArtifactError          a model artifact cannot be trusted or read
    │   └── SignatureInvalid   its signature is missing or does not match
    ├── RegistryError          a model or version is unknown
    ├── ModelBusy              a model runs as many training jobs as it may (409)
    ├── RolloutRefused         a traffic change does not fit the model's split (409)
    ├── SchemaError            a data file does not fit the feature schema at all
    ├── StorageError           an object cannot be located or read from here
    │   └── ObjectKeyError     its key would name something outside its bucket
    ├── ManifestError          a manifest cannot be read into the local runtime
    ├── RuntimeStartError      a local process would not start or get ready
    └── PlatformRequestError   the broker or the router refused a request, or is down

Each class carries the HTTP status an endpoint answers with when it escapes a
handler, so the boundary translates once (bentoml's habit).
"""

from __future__ import annotations

from http import HTTPStatus


class FalajError(Exception):
    """Root of every error Falaj raises on purpose."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR


class ConfigError(FalajError):
    """Raised when a setting is missing or malformed; the message names the key."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR


class ResidencyViolation(FalajError):
    """Raised when a location, event, job or deployment is outside the allowed regions."""

    status = HTTPStatus.FORBIDDEN

    def __init__(self, message: str, *, resource: str, region: str, boundary: str) -> None:
        super().__init__(message)
        self.resource = resource
        self.region = region
        self.boundary = boundary


class EventError(FalajError):
    """Raised when an event is malformed, of an unknown type, or its data fails its schema."""

    status = HTTPStatus.BAD_REQUEST

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class PublishError(FalajError):
    """Raised when the broker cannot be reached or refuses an event being published.

    A 503: the caller's own delivery should be retried, not dead-lettered.
    ``status_code`` is the broker's answer, or None when none came (down, timeout);
    a source that must settle a message (ack or dead-letter it) decides by it.
    """

    status = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class AuthError(FalajError):
    """Raised when a request carries no token or an unknown one."""

    status = HTTPStatus.UNAUTHORIZED


class PermissionDenied(AuthError):
    """Raised when an authenticated caller's role does not allow the action."""

    status = HTTPStatus.FORBIDDEN

    def __init__(self, message: str, *, subject: str = "unknown", role: str = "none") -> None:
        super().__init__(message)
        #: Who was refused: the audit entry names the caller when it is known.
        self.subject = subject
        self.role = role


class AuditError(FalajError):
    """Raised when the audit log cannot be written or read."""


class AuditTampered(AuditError):
    """Raised when the audit log's hash chain does not verify."""

    status = HTTPStatus.CONFLICT


class ArtifactError(FalajError):
    """Raised when a model artifact cannot be read, decrypted or trusted."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY


class SignatureInvalid(ArtifactError):
    """Raised when an artifact is unsigned or its files do not match the signature."""


class RegistryError(FalajError):
    """Raised when a model or a model version is not in the registry."""

    status = HTTPStatus.NOT_FOUND


class ModelBusy(FalajError):
    """Raised when a launch would exceed a model's concurrent training runs.

    The launcher keeps the request as the model's pending one; it goes out
    when a run ends.
    """

    status = HTTPStatus.CONFLICT


class RolloutRefused(FalajError):
    """Raised when a rollout step does not fit the model's current traffic split.

    E.g. promoting a model that has no canary, or a canary of the version
    that is already stable. The message says what the split is now.
    """

    status = HTTPStatus.CONFLICT


class DeploymentError(FalajError):
    """Raised when a traffic split cannot be written where the model is served (the cluster).

    A 503: the step was valid and may succeed once the API server answers; a
    split the cluster cannot express (shadow traffic) says so in the message.
    """

    status = HTTPStatus.SERVICE_UNAVAILABLE


class SchemaError(FalajError):
    """Raised when a data file cannot be read against the feature schema at all."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY


class StorageError(FalajError):
    """Raised when an object's bucket and key cannot be turned into something readable here.

    A 422: the same event will fail the same way, so it is dead-lettered, not retried.
    """

    status = HTTPStatus.UNPROCESSABLE_ENTITY


class ObjectKeyError(StorageError):
    """Raised when a key is absolute, has ``..`` segments, or resolves outside its bucket."""


class ManifestError(FalajError):
    """Raised when a manifest cannot be turned into something the local runtime runs."""


class RuntimeStartError(FalajError):
    """Raised when a local process does not start or does not become ready in time."""


class PlatformRequestError(FalajError):
    """Raised when another platform process (the broker, the router) refuses a request or is down.

    ``status`` is its own answer when it refused (a 403 stays a 403 for the
    caller), and 502 or 503 when it failed or could not be reached.
    """

    def __init__(self, message: str, *, status: HTTPStatus) -> None:
        super().__init__(message)
        self.status = status
