from __future__ import annotations

from datetime import UTC, datetime

import pytest

from eventing.retry import backoff_s, retry_after_s, should_retry, wait_before_retry_s
from falaj.topology import BackoffPolicy, DeliverySpec


@pytest.mark.parametrize(
    ("status", "retried"),
    [
        (None, True),  # no response: network error or timeout
        (500, True),
        (502, True),
        (503, True),
        (404, True),  # Knative: a pod may still be becoming ready
        (408, True),
        (409, True),
        (429, True),
        (400, False),
        (401, False),
        (403, False),
        (413, False),
        (422, False),
        (301, False),
        (302, False),
    ],
)
def test_retried_statuses_follow_knative_selective_retry(status: int | None, retried: bool) -> None:
    assert should_retry(status) is retried


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # go-retryablehttp hands Knative's backoff the loop index, 0 before the first retry.
        (BackoffPolicy.LINEAR, [0.0, 0.5, 1.0, 1.5]),
        (BackoffPolicy.EXPONENTIAL, [0.5, 1.0, 2.0, 4.0]),
    ],
)
def test_backoff_grows_per_policy(policy: BackoffPolicy, expected: list[float]) -> None:
    spec = DeliverySpec(retry=4, backoff_policy=policy, backoff_delay_s=0.5)
    assert [backoff_s(spec, n) for n in (1, 2, 3, 4)] == pytest.approx(expected)


@pytest.mark.parametrize(
    "spec",
    [
        DeliverySpec(retry=3),
        DeliverySpec(retry=3, backoff_delay_s=0.5),
        DeliverySpec(retry=3, backoff_policy=BackoffPolicy.EXPONENTIAL),
    ],
)
def test_no_backoff_unless_both_policy_and_delay_are_given(spec: DeliverySpec) -> None:
    # RetryConfigFromDeliverySpec sets a Backoff only when both are non-nil.
    assert [backoff_s(spec, n) for n in (1, 2, 3)] == [0.0, 0.0, 0.0]


def test_backoff_refuses_retry_zero() -> None:
    with pytest.raises(ValueError, match="retry number of 1 or more"):
        backoff_s(DeliverySpec(), 0)


NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("Mon, 23 Nov 2026 12:00:30 GMT", 30.0),
        ("Mon, 23 Nov 2026 11:00:00 GMT", 0.0),  # in the past
        ("soon", 0.0),
        (None, 0.0),
    ],
)
def test_retry_after_is_delta_seconds_or_an_http_date(header: str | None, seconds: float) -> None:
    assert retry_after_s(header, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("status", "retry_after", "retry_after_max_s", "expected"),
    [
        (429, "5", 2.0, 2.0),  # honoured, capped at retryAfterMax
        (503, "1", 2.0, 1.0),  # longer than the backoff: honoured
        (429, "0", 2.0, 0.1),  # shorter than the backoff: the backoff wins
        (500, "5", 2.0, 0.1),  # only 429 and 503 carry a Retry-After Knative reads
        (429, "5", None, 0.1),  # without retryAfterMax the header is ignored
    ],
)
def test_retry_after_is_honoured_for_429_and_503_up_to_the_max(
    status: int, retry_after: str, retry_after_max_s: float | None, expected: float
) -> None:
    spec = DeliverySpec(
        retry=3,
        backoff_policy=BackoffPolicy.EXPONENTIAL,
        backoff_delay_s=0.1,
        retry_after_max_s=retry_after_max_s,
    )
    wait = wait_before_retry_s(spec, 1, status_code=status, retry_after=retry_after, now=NOW)
    assert wait == pytest.approx(expected)
