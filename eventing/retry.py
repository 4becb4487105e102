"""When a failed delivery is tried again, and after how long: Knative's rules.

Which responses are retried follows knative/eventing ``pkg/kncloudevents``
``SelectiveRetry``: no response at all (a network error or timeout), any 5xx,
and four 4xx that are usually transient -- 404 (a pod still becoming ready),
408 (request timeout), 409 (conflict) and 429 (too many requests). Every other
status (3xx, other 4xx) is final: retrying the same bytes cannot fix it, so the
event goes to the dead letters at once.

Backoff follows Knative's DeliverySpec: before retry ``n`` (1, 2, ...) wait
``delay * n`` (linear) or ``delay * 2**n`` (exponential).
"""

from __future__ import annotations

from falaj.topology import BackoffPolicy, DeliverySpec

#: The 4xx statuses Knative retries despite being client errors.
RETRIED_CLIENT_ERRORS = frozenset({404, 408, 409, 429})


def is_success(status_code: int) -> bool:
    return 200 <= status_code < 300


def should_retry(status_code: int | None) -> bool:
    """True when a delivery that got this status (None: no response) may succeed later."""
    if status_code is None:
        return True
    return status_code >= 500 or status_code in RETRIED_CLIENT_ERRORS


def backoff_s(delivery: DeliverySpec, retry_number: int) -> float:
    """Seconds to wait before retry ``retry_number`` (the first retry is 1)."""
    if retry_number < 1:
        raise ValueError(f"expected a retry number of 1 or more, got {retry_number}")
    if delivery.backoff_policy == BackoffPolicy.LINEAR:
        return delivery.backoff_delay_s * retry_number
    return float(delivery.backoff_delay_s * 2**retry_number)
