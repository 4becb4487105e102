"""When a failed delivery is tried again, and after how long: Knative's rules.

Which responses are retried follows knative/eventing ``pkg/kncloudevents``
``SelectiveRetry``: no response at all (a network error or timeout), any 5xx,
and four 4xx that are usually transient -- 404 (a pod still becoming ready),
408 (request timeout), 409 (conflict) and 429 (too many requests). Every other
status (3xx, other 4xx) is final: retrying the same bytes cannot fix it, so the
event goes to the dead letters at once.

The wait before a retry follows ``RetryConfigFromDeliverySpec`` as
go-retryablehttp calls it: the backoff function gets the loop index, which is
0 before the first retry. So before retry ``n`` (1, 2, ...) Knative waits
``delay * 2**(n-1)`` (exponential: d, 2d, 4d, ...) or ``delay * (n-1)``
(linear: 0, d, 2d, ...). Without both ``backoffPolicy`` and ``backoffDelay``
there is no backoff at all. With ``retryAfterMax`` set, a 429 or 503 that says
``Retry-After`` waits that long instead when it is longer, capped at the max.
"""

from __future__ import annotations

from datetime import datetime
from email.utils import parsedate_to_datetime

from falaj.topology import BackoffPolicy, DeliverySpec

#: The 4xx statuses Knative retries despite being client errors.
RETRIED_CLIENT_ERRORS = frozenset({404, 408, 409, 429})
#: The statuses whose Retry-After header Knative honours (with retryAfterMax).
RETRY_AFTER_STATUSES = frozenset({429, 503})


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
    if delivery.backoff_policy is None or delivery.backoff_delay_s is None:
        return 0.0
    index = retry_number - 1
    if delivery.backoff_policy == BackoffPolicy.LINEAR:
        return delivery.backoff_delay_s * index
    return float(delivery.backoff_delay_s * 2**index)


def retry_after_s(value: str | None, *, now: datetime) -> float:
    """A Retry-After header in seconds: delta-seconds or an HTTP date; 0 when absent or bad."""
    if not value:
        return 0.0
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, (moment - now).total_seconds())


def wait_before_retry_s(
    delivery: DeliverySpec,
    retry_number: int,
    *,
    status_code: int | None,
    retry_after: str | None,
    now: datetime,
) -> float:
    """The backoff, or the subscriber's Retry-After when Knative would honour a longer one."""
    wait = backoff_s(delivery, retry_number)
    if delivery.retry_after_max_s is not None and status_code in RETRY_AFTER_STATUSES:
        asked = min(retry_after_s(retry_after, now=now), delivery.retry_after_max_s)
        wait = max(wait, asked)
    return wait
