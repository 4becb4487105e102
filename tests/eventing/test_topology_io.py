from __future__ import annotations

import os
from pathlib import Path

from eventing.topology_io import Endpoints, dump_endpoints


def test_endpoints_follow_the_file_as_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.json"
    endpoints = Endpoints(path=path, recheck_s=0)
    assert endpoints.resolve("ingest") is None  # no file yet
    dump_endpoints({"ingest": "http://127.0.0.1:9001/"}, path)
    assert endpoints.resolve("ingest") == "http://127.0.0.1:9001/"
    dump_endpoints({"ingest": "http://127.0.0.1:9002/"}, path)
    os.utime(path, ns=(1, 1))  # a distinct mtime even on coarse file systems
    assert endpoints.resolve("ingest") == "http://127.0.0.1:9002/"
    assert endpoints.resolve("http://example.test/hook") == "http://example.test/hook"


def test_a_known_url_is_reused_until_the_recheck_interval_passes(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.json"
    dump_endpoints({"ingest": "http://127.0.0.1:9001/"}, path)
    endpoints = Endpoints(path=path, recheck_s=3600)
    assert endpoints.resolve("ingest") == "http://127.0.0.1:9001/"
    dump_endpoints({"ingest": "http://127.0.0.1:9002/", "drift": "http://127.0.0.1:9003/"}, path)
    os.utime(path, ns=(1, 1))
    assert endpoints.resolve("ingest") == "http://127.0.0.1:9001/"  # not looked at again yet
    # A name not known yet is always looked for, and that refreshes the rest.
    assert endpoints.resolve("drift") == "http://127.0.0.1:9003/"
    assert endpoints.resolve("ingest") == "http://127.0.0.1:9002/"
