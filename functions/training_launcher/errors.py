"""Errors of the training launcher.

FalajError                (falaj.errors)
└── JobSubmissionFailed   the Ray Jobs API could not be reached or refused a job (503)
"""

from __future__ import annotations

from http import HTTPStatus

from falaj.errors import FalajError


class JobSubmissionFailed(FalajError):
    """Raised when the Ray Jobs API is unreachable or refuses a submission or a status query.

    A 503, so the broker redelivers the event: the request is kept as pending
    and goes out once Ray answers again.
    """

    status = HTTPStatus.SERVICE_UNAVAILABLE
