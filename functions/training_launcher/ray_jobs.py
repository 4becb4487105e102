"""Submitting the training job to the Ray Jobs API, and asking how it went.

The job runs ``training.job`` with the interpreter of this process
(``sys.executable``): a bare ``python`` runs whatever is first on the Ray
worker's PATH (STACK.md). Its settings travel as ``FALAJ_*`` variables in the
job's runtime environment, which Ray shows on its dashboard and in its state
API, so no secret is among them: the job gets ``FALAJ_TOKEN_FILE`` for the
bearer token and ``FALAJ_SECRETS_FILE`` for the Feast stores' URLs, the paths
of files only this user can read.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests
from ray.job_submission import JobSubmissionClient

from falaj.runtime.ray_head import ray_auth_headers, ray_env
from falaj.settings import ENV_PREFIX, PROJECT_ROOT, SECRET_SETTINGS, Settings
from falaj.training_runs import TrainingRequest
from functions.training_launcher.errors import JobSubmissionFailed

#: The secret settings a training job needs: it reads and applies the Feast stores.
JOB_SECRETS = ("online_store", "feature_registry")
#: The status recorded for a job the Ray head no longer knows (it was restarted).
LOST = "LOST"
JOB_MODULE = "training.job"


@dataclass(frozen=True)
class JobState:
    """What the cluster says of a job: its status and, once it ended, how."""

    #: PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED, or ``LOST``.
    status: str
    #: The entrypoint's exit code (``falaj.training_job.JobExit``), when it exited.
    exit_code: int | None = None
    #: The cluster's own words about the end (Ray's job message), when it said any.
    message: str | None = None


@dataclass(frozen=True)
class JobSpec:
    """Everything the Ray Jobs API is given for one training run."""

    job_id: str
    entrypoint: str
    runtime_env: Mapping[str, Any]
    metadata: Mapping[str, str]


def job_spec(
    job_id: str,
    request: TrainingRequest,
    settings: Settings,
    *,
    token_file: Path | None,
    secrets_file: Path | None = None,
) -> JobSpec:
    argv = [
        sys.executable,
        "-m",
        JOB_MODULE,
        "--model",
        request.model,
        "--reason",
        str(request.reason),
        "--job-id",
        job_id,
        # A retried job resumes the Ray Train run (and its checkpoints) of the
        # job that was lost; a first try starts a run of its own name.
        "--run-name",
        request.run_name or job_id,
    ]
    return JobSpec(
        job_id=job_id,
        entrypoint=shlex.join(argv),
        runtime_env={
            "env_vars": job_env(settings, token_file=token_file, secrets_file=secrets_file)
        },
        metadata={
            "model": request.model,
            "reason": str(request.reason),
            "urgent": str(request.urgent).lower(),
            "cause_event_id": request.cause_event_id or "",
            "attempt": str(request.attempt),
        },
    )


def job_env(
    settings: Settings, *, token_file: Path | None, secrets_file: Path | None = None
) -> dict[str, str]:
    """The job's environment: the settings, with each secret replaced by a file.

    Ray shows a job's environment on its dashboard: no secret setting (the
    token, a store's URL with its password) goes into it. ``secrets_file``
    holds the ``JOB_SECRETS`` (``write_secrets_file``); the AMQP URL the job
    never needs is in neither.
    """
    files = {f"{ENV_PREFIX}TOKEN_FILE", f"{ENV_PREFIX}SECRETS_FILE"}
    hidden = files | {ENV_PREFIX + name.upper() for name in SECRET_SETTINGS}
    env = {key: value for key, value in settings.to_env().items() if key not in hidden}
    if token_file is not None:
        env[f"{ENV_PREFIX}TOKEN_FILE"] = str(token_file.resolve())
    if secrets_file is not None:
        env[f"{ENV_PREFIX}SECRETS_FILE"] = str(secrets_file.resolve())
    # The same Ray settings as the head: the job's own ray.init presents the
    # head's token (or expects none where it has none), and Ray Train polls as fast.
    env.update(ray_env({}, token_file=settings.ray_token_file))
    # The job's working directory is a Ray temp dir; the project root on the
    # path makes `-m training.job` import even where it is not installed.
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    return env


class JobsBackend(Protocol):
    """Where training jobs run: a Ray head's Jobs API, or KubeRay (``kuberay.KubeRayJobs``)."""

    def submit(self, spec: JobSpec) -> str: ...

    def state(self, job_id: str) -> JobState: ...

    def close(self) -> None: ...


class RayJobs:
    """A thin boundary over ``JobSubmissionClient``: Ray's errors become ``JobSubmissionFailed``."""

    def __init__(self, address: str, *, token_file: Path | None = None) -> None:
        self.address = address
        #: Ray's token authentication: the Jobs API refuses a client without it.
        self.token_file = token_file
        self._client: JobSubmissionClient | None = None

    def submit(self, spec: JobSpec) -> str:
        try:
            return str(
                self._connected().submit_job(
                    entrypoint=spec.entrypoint,
                    submission_id=spec.job_id,
                    runtime_env=dict(spec.runtime_env),
                    metadata=dict(spec.metadata),
                )
            )
        except (requests.RequestException, RuntimeError, ConnectionError) as exc:
            self._client = None
            raise JobSubmissionFailed(
                f"the Ray Jobs API at {self.address} did not accept training job "
                f"{spec.job_id}: {short_error(exc)}; is the Ray head running ('falaj up')?"
            ) from exc

    def state(self, job_id: str) -> JobState:
        """Ray's status of the job (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED), or LOST."""
        try:
            info = self._connected().get_job_info(job_id)
            return JobState(
                status=str(info.status.value),
                exit_code=info.driver_exit_code,
                message=info.message,
            )
        except RuntimeError as exc:
            # The SDK reports HTTP errors as RuntimeError with the status in
            # the text; a 404 means the head forgot the job (it restarted).
            if "status code 404" in str(exc):
                return JobState(
                    status=LOST,
                    message="the Ray head no longer knows the job (it was restarted)",
                )
            self._client = None
            raise JobSubmissionFailed(
                f"cannot read the status of training job {job_id} from {self.address}: "
                f"{short_error(exc)}"
            ) from exc
        except (requests.RequestException, ConnectionError) as exc:
            self._client = None
            raise JobSubmissionFailed(
                f"cannot reach the Ray Jobs API at {self.address} to read training job "
                f"{job_id}: {short_error(exc)}; is the Ray head running ('falaj up')?"
            ) from exc

    def close(self) -> None:
        self._client = None

    def _connected(self) -> JobSubmissionClient:
        # Connecting checks the head's version over HTTP, so it is done on the
        # first use, not when the function starts (Ray may come up after it).
        if self._client is None:
            headers = ray_auth_headers(self.token_file)
            self._client = JobSubmissionClient(self.address, headers=headers)
        return self._client


def short_error(exc: BaseException) -> str:
    """An error's type and the start of its text, for a message that must stay readable."""
    return f"{type(exc).__name__}: {str(exc)[:300]}"
