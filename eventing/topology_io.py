"""Subscriber URLs for the local broker, kept in step with the endpoints file.

The file formats live in ``falaj.topology_files``: ``falaj up`` writes them and
the broker reads them with the same functions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

from falaj.errors import ManifestError
from falaj.topology_files import (
    EventingTopology,
    dump_endpoints,
    dump_topology,
    load_endpoints,
    load_topology_file,
)

__all__ = [
    "Endpoints",
    "EventingTopology",
    "dump_endpoints",
    "dump_topology",
    "load_endpoints",
    "load_topology_file",
]


#: How long a looked-up URL is used before the endpoints file is checked again.
RECHECK_S = 0.2


class Endpoints:
    """Subscriber URLs by service name, kept in step with the endpoints file.

    Services start after the broker (or on demand, or again on another port),
    so the file is re-read when it changed. Every delivery looks its
    subscriber up, so the file's mtime is checked at most every
    ``RECHECK_S`` (a ``stat`` per delivery cost ~3% of the broker under
    load); a name not found yet is checked for every time.
    """

    def __init__(
        self,
        mapping: Mapping[str, str] | None = None,
        path: Path | None = None,
        *,
        recheck_s: float = RECHECK_S,
    ) -> None:
        self.path = path
        self.recheck_s = recheck_s
        self._lock = threading.Lock()
        self._fixed: dict[str, str] = dict(mapping or {})
        self._from_file: dict[str, str] = {}
        self._seen_mtime_ns: int | None = None
        self._checked_at = -recheck_s

    @property
    def fixed(self) -> dict[str, str]:
        """The URLs given up front (not from the file)."""
        return dict(self._fixed)

    def resolve(self, name: str) -> str | None:
        """The URL of a service name, or an absolute URI as is; None when unknown (yet)."""
        if name.startswith(("http://", "https://")):
            return name
        with self._lock:
            url = self._from_file.get(name) or self._fixed.get(name)
            now = time.monotonic()
            if url is None or now - self._checked_at >= self.recheck_s:
                self._checked_at = now
                self._reload_if_changed()
                url = self._from_file.get(name) or self._fixed.get(name)
            return url

    def _reload_if_changed(self) -> None:
        if self.path is None:
            return
        try:
            mtime_ns = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime_ns == self._seen_mtime_ns:
            return
        try:
            self._from_file = load_endpoints(self.path)
        except ManifestError:
            # Written by rename, so this is a hand edit in progress: try again next lookup.
            return
        self._seen_mtime_ns = mtime_ns
