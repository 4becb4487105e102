"""Waiting for a Ray job submitted through the Jobs API, as the tests that run real jobs do."""

from __future__ import annotations

import sys
import time

from ray.job_submission import JobStatus, JobSubmissionClient


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
