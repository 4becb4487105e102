from __future__ import annotations

import pytest

from eventing.retry import backoff_s, should_retry
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
        (BackoffPolicy.LINEAR, [0.5, 1.0, 1.5]),
        (BackoffPolicy.EXPONENTIAL, [1.0, 2.0, 4.0]),
    ],
)
def test_backoff_grows_per_policy(policy: BackoffPolicy, expected: list[float]) -> None:
    spec = DeliverySpec(retry=3, backoff_policy=policy, backoff_delay_s=0.5)
    assert [backoff_s(spec, n) for n in (1, 2, 3)] == pytest.approx(expected)


def test_backoff_refuses_retry_zero() -> None:
    with pytest.raises(ValueError, match="retry number of 1 or more"):
        backoff_s(DeliverySpec(), 0)
