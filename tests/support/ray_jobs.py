"""Waiting for a Ray job submitted through the Jobs API, as the tests that run real jobs do."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

from falaj.runtime.ray_head import ray_auth_headers


@dataclass(frozen=True)
class RayHead:
    """The tests' shared Ray head: its Jobs API and the token it requires."""

    address: str
    token_file: Path

    @property
    def env(self) -> dict[str, str]:
        """The settings that point a platform at this head, as environment variables."""
        return {"FALAJ_RAY_ADDRESS": self.address, "FALAJ_RAY_TOKEN_FILE": str(self.token_file)}

    def client(self) -> JobSubmissionClient:
        return JobSubmissionClient(self.address, headers=ray_auth_headers(self.token_file))


def wait_for_job(client: JobSubmissionClient, job_id: str, timeout_s: float = 300.0) -> JobStatus:
    """The job's final status; its log goes to stderr when it did not succeed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            if status != JobStatus.SUCCEEDED:
                print(client.get_job_logs(job_id)[-6000:], file=sys.stderr)
            return status
        time.sleep(0.5)  # polling the Jobs API, as the dashboard does
    client.stop_job(job_id)
    raise AssertionError(
        f"job {job_id} did not end in {timeout_s} s:\n{client.get_job_logs(job_id)}"
    )
