from __future__ import annotations

import os
from pathlib import Path

from eventing.topology_io import Endpoints, dump_endpoints


def test_endpoints_follow_the_file_as_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.json"
    endpoints = Endpoints(path=path)
    assert endpoints.resolve("ingest") is None  # no file yet
    dump_endpoints({"ingest": "http://127.0.0.1:9001/"}, path)
    assert endpoints.resolve("ingest") == "http://127.0.0.1:9001/"
    dump_endpoints({"ingest": "http://127.0.0.1:9002/"}, path)
    os.utime(path, ns=(1, 1))  # a distinct mtime even on coarse file systems
    assert endpoints.resolve("ingest") == "http://127.0.0.1:9002/"
    assert endpoints.resolve("http://example.test/hook") == "http://example.test/hook"
