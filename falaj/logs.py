"""structlog JSON logs with trace ids, and secrets kept out of them."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
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
