"""Errors of the inference package (all under falaj's one root).

    FalajError
    ├── InvalidPayload    a prediction request does not fit the model's input (400)
    ├── FeaturesUnavailable  the online feature store cannot be read (503)
    └── UpstreamError     a predictor did not answer the router (502)

Each carries every problem found, so a caller fixes a request in one go. The
KServe boundary turns it into ``kserve.errors.InvalidInput`` (a 400 that keeps
the connection), the router into a JSON 400.
"""

from __future__ import annotations

from http import HTTPStatus

from falaj.errors import FalajError


class InvalidPayload(FalajError):
    """Raised when a request's instances or tensors do not fit the model's features."""

    status = HTTPStatus.BAD_REQUEST

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class UpstreamError(FalajError):
    """Raised when a predictor does not answer the router (refused, reset, timed out)."""

    status = HTTPStatus.BAD_GATEWAY


class FeaturesUnavailable(FalajError):
    """Raised when the online feature store cannot be read (down, or not applied yet)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
