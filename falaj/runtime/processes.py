"""Local processes started by the platform (and by tests): started, awaited, stopped by PID.

Each process runs in its own session so that stopping it stops its children
(gunicorn workers, Ray's raylet) with it; nothing is left bound.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from falaj.errors import RuntimeStartError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (``falaj status``, the dashboard's overview)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


@dataclass
class ManagedProcess:
    """One child process, its log file, and how to tell it is ready."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    cwd: Path | None = None
    #: How long SIGTERM is given before SIGKILL.
    grace_s: float = 15.0
    #: Folders the process leaves behind that go when it stops.
    cleanup: tuple[Path, ...] = ()
    #: Give the process a pipe on stdin (``send_line``) instead of /dev/null.
    stdin_pipe: bool = False
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                list(self.argv),
                env=dict(self.env),
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE if self.stdin_pipe else subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def send_line(self, line: str) -> None:
        """Write one line to the process's stdin pipe and close it (it reads one line)."""
        if self.popen is None or self.popen.stdin is None:
            raise RuntimeStartError(f"{self.name} has no stdin pipe (start it with stdin_pipe)")
        try:
            self.popen.stdin.write(line.encode() + b"\n")
            self.popen.stdin.close()
        except OSError as exc:  # it died meanwhile: its exit code says why
            raise RuntimeStartError(f"{self.name} could not take its input: {exc}") from None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_ready(
        self, check: Callable[[], bool], timeout_s: float = 60.0, poll_s: float = 0.1
    ) -> None:
        """Poll ``check`` until it passes, the process dies, or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeStartError(
                    f"{self.name} exited with code {self.popen.returncode if self.popen else '?'}"
                    f" before it was ready; its log: {self.log_path}\n{self.tail()}"
                )
            if check():
                return
            time.sleep(poll_s)  # polling a readiness probe, as a kubelet does
        raise RuntimeStartError(
            f"{self.name} was not ready after {timeout_s:.0f} s; its log: {self.log_path}\n"
            + self.tail()
        )

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL what is left after the grace period."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=self.grace_s)
            # The leader may be gone while children linger in its group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
            if self.popen.stdin is not None:
                self.popen.stdin.close()
        for folder in self.cleanup:
            shutil.rmtree(folder, ignore_errors=True)

    def tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class ReadyCheck:
    """A readiness probe: a TCP port accepting, or an HTTP GET answering 2xx.

    With ``tls`` (what verifies the listener's certificate) the GET is https.
    """

    def __init__(
        self,
        host: str,
        port: int,
        path: str | None = None,
        *,
        tls: ssl.SSLContext | bool | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.host, self.port, self.path, self.tls = host, port, path, tls
        self.headers = dict(headers or {})

    def __call__(self) -> bool:
        if self.path is None:
            return port_open(self.host, self.port)
        scheme, verify = ("http", True) if self.tls is None else ("https", self.tls)
        try:
            url = f"{scheme}://{self.host}:{self.port}{self.path}"
            response = httpx.get(url, timeout=1.0, verify=verify, headers=self.headers)
        except httpx.HTTPError:
            return False
        return response.status_code < 300


def stop_on_signals(*signums: signal.Signals) -> threading.Event:
    """An event set on SIGTERM or SIGINT (or ``signums``): a source's loop runs until it is set."""
    stop = threading.Event()

    def on_signal(signum: int, _: FrameType | None) -> None:
        stop.set()

    for signum in signums or (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    return stop


def broker_argv(topology: Path, endpoints: Path) -> list[str]:
    """The local broker's command line (``python -m eventing.broker``) for these files."""
    return [
        sys.executable,
        "-m",
        "eventing.broker",
        f"--topology={topology}",
        f"--endpoints={endpoints}",
    ]
