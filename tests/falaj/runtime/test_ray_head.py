"""The Ray head ``falaj up`` starts takes jobs only from a caller with its token.

Ray's Jobs API runs any command it is given: without token authentication
anything on the machine (or the network, on a cluster) could run code in the
training environment, with its access to the feature store.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
from ray.job_submission import JobSubmissionClient

from falaj.runtime.ray_head import ray_auth_headers, ray_env
from tests.support.ray_jobs import RayHead, wait_for_job


@pytest.mark.ray
def test_the_jobs_api_refuses_a_caller_without_the_token(ray_head: RayHead) -> None:
    jobs = f"{ray_head.address}/api/jobs/"
    assert httpx.get(jobs, timeout=10.0).status_code == 401
    forged = {"Authorization": "Bearer " + "0" * 64}
    assert httpx.get(jobs, headers=forged, timeout=10.0).status_code == 403
    with pytest.raises(Exception, match=r"401|Unauthorized"):
        JobSubmissionClient(ray_head.address).submit_job(entrypoint="echo should-never-run")

    # With the token a job runs, and its own ray.init reaches the cluster (the
    # driver inherits the head's token, as a training job's does).
    client = ray_head.client()
    script = "import ray; ray.init(); print('cpus', ray.cluster_resources()['CPU'])"
    job = client.submit_job(entrypoint=f'{sys.executable} -c "{script}"')
    status = wait_for_job(client, job, timeout_s=120.0)
    assert str(status) == "SUCCEEDED"
    assert "cpus " in client.get_job_logs(job)


def test_a_token_file_switches_ray_to_token_authentication(tmp_path: Path) -> None:
    token_file = tmp_path / "ray.token"
    token_file.write_text("abc\n")
    env = ray_env({}, token_file=token_file)
    assert (env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN_PATH"]) == ("token", str(token_file))
    assert ray_auth_headers(token_file) == {"Authorization": "Bearer abc"}
    assert ray_env({})["RAY_AUTH_MODE"] == "disabled"
    assert ray_auth_headers(None) == {}
