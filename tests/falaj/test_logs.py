"""Trace ids in the logs: W3C traceparent read, bound while an event is handled, passed on."""

from __future__ import annotations

import pytest
import structlog
from structlog.testing import capture_logs

from falaj.logs import current_traceparent, get_logger, trace_id_of, traced

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TRACEPARENT, TRACE_ID),
        # A later version may carry more fields; its trace id still reads.
        (f"01-{TRACE_ID}-00f067aa0ba902b7-00-more", TRACE_ID),
        (f"00-{TRACE_ID}-00f067aa0ba902b7-01-more", None),  # version 00 has exactly four
        (f"ff-{TRACE_ID}-00f067aa0ba902b7-01", None),
        ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", None),
        (f"00-{TRACE_ID}-" + "0" * 16 + "-01", None),
        (TRACEPARENT.upper(), None),
        ("not a traceparent", None),
        (None, None),
        (42, None),
    ],
)
def test_trace_id_of_reads_only_a_valid_traceparent(value: object, expected: str | None) -> None:
    assert trace_id_of(value) == expected


def test_lines_logged_under_a_trace_carry_its_id_and_its_traceparent_goes_on() -> None:
    log = get_logger(component="test")
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as lines:
        with traced(TRACEPARENT) as trace_id:
            assert trace_id == TRACE_ID
            assert current_traceparent() == TRACEPARENT
            log.info("inside")
        log.info("after")
        with traced("garbage") as none:
            assert none is None and current_traceparent() is None
            log.info("untraced")
    inside, after, untraced = lines
    assert inside["trace_id"] == TRACE_ID
    assert "trace_id" not in after and "trace_id" not in untraced
    assert current_traceparent() is None
