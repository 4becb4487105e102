"""A function served by the real functions-framework, as its Knative Service runs it."""

from __future__ import annotations

import sys
from pathlib import Path

from falaj.runtime.processes import ManagedProcess, ReadyCheck, free_port
from falaj.settings import PROJECT_ROOT, Settings


def start_function(
    directory: str, settings: Settings, log_dir: Path, timeout_s: float = 90.0
) -> tuple[ManagedProcess, str]:
    """Start ``functions/<directory>/main.py``; the caller stops the process (by PID)."""
    port = free_port()
    process = ManagedProcess(
        name=directory,
        argv=[
            sys.executable,
            "-m",
            "functions_framework",
            "--source",
            str(PROJECT_ROOT / "functions" / directory / "main.py"),
            "--target",
            "handle",
            "--signature-type",
            "cloudevent",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT_ROOT), **settings.to_env()},
        log_path=log_dir / f"{directory}.log",
        cwd=PROJECT_ROOT,
    ).start()
    try:
        process.wait_ready(ReadyCheck("127.0.0.1", port), timeout_s=timeout_s)
    except BaseException:
        process.stop()
        raise
    return process, f"http://127.0.0.1:{port}/"
