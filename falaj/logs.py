"""structlog JSON logs with trace ids, and secrets kept out of them.

While a process handles an event that carries a W3C ``traceparent``
(``traced``), every line it logs carries the trace id as ``trace_id``, and the
events it emits meanwhile carry the same ``traceparent`` on
(``current_traceparent``), so one trace id follows a file from ingest to the
model it retrained.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import structlog

# Keys whose values never reach a log line, whatever logs them.
SECRET_KEYS = frozenset(
    {"token", "authorization", "password", "secret", "key", "private_key", "api_key"}
)
REDACTED = "[redacted]"


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in list(event):
        if name.lower() in SECRET_KEYS or name.lower().endswith(("_token", "_secret", "_key")):
            event[name] = REDACTED
    return event


def configure_logging(component: str, level: str = "info") -> None:
    """JSON lines on stderr, one per event, tagged with the component name."""
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(component=component)


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger(**bound)


#: The CloudEvents extension attribute (and HTTP header) trace context travels in.
TRACEPARENT = "traceparent"
# version-traceid-parentid-flags; a later version may append fields (W3C Trace Context).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZEROS = re.compile(r"0+")
# Per thread and per asyncio task, as structlog's own context is: one handler's
# event never lends its trace to another's.
_current_traceparent: ContextVar[str | None] = ContextVar("falaj_traceparent", default=None)


def trace_id_of(traceparent: object) -> str | None:
    """The 32-hex trace id of a W3C ``traceparent``; None when the value is not one."""
    if not isinstance(traceparent, str):
        return None
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None:
        return None
    version, trace_id, parent_id, _, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if _ZEROS.fullmatch(trace_id) or _ZEROS.fullmatch(parent_id):
        return None
    return trace_id


@contextmanager
def traced(traceparent: object) -> Iterator[str | None]:
    """Handle an event under its trace: its trace id on every log line, its traceparent
    passed on to what is emitted meanwhile. Yields the trace id (None: no valid trace)."""
    trace_id = trace_id_of(traceparent)
    if trace_id is None:
        yield None
        return
    assert isinstance(traceparent, str)
    token = _current_traceparent.set(traceparent)
    try:
        with structlog.contextvars.bound_contextvars(trace_id=trace_id):
            yield trace_id
    finally:
        _current_traceparent.reset(token)


def current_traceparent() -> str | None:
    """The ``traceparent`` of the event being handled here, if it carried one."""
    return _current_traceparent.get()
