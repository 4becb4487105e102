"""Subscriber URLs for the local broker, kept in step with the endpoints file.

The file formats live in ``falaj.topology_files``: ``falaj up`` writes them and
the broker reads them with the same functions.
"""

from __future__ import annotations

import threading
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


class Endpoints:
    """Subscriber URLs by service name, kept in step with the endpoints file.

    Services start after the broker (or on demand, or again on another port),
    so the file is re-read whenever it changed since the last lookup.
    """

    def __init__(self, mapping: Mapping[str, str] | None = None, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fixed: dict[str, str] = dict(mapping or {})
        self._from_file: dict[str, str] = {}
        self._seen_mtime_ns: int | None = None

    def resolve(self, name: str) -> str | None:
        """The URL of a service name, or an absolute URI as is; None when unknown (yet)."""
        if name.startswith(("http://", "https://")):
            return name
        with self._lock:
            self._reload_if_changed()
            return self._from_file.get(name) or self._fixed.get(name)

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
