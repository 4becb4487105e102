"""With certificates configured, every listener of ``falaj up`` serves TLS and nothing else.

A throwaway CA (trustme) signs a certificate for 127.0.0.1. The platform runs
on it; the loop's hops are all https: a file lands (storage source -> broker ->
the ingest function -> broker), a prediction goes router -> predictor and its
payload router -> broker. Then every listener refuses plain HTTP and a client
that does not trust the CA, and the predictor's gRPC port speaks only TLS.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest
import trustme
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from falaj.client import PlatformClient
from falaj.demo.data import generate_transactions
from falaj.errors import ConfigError
from falaj.events import EventType
from falaj.settings import Settings
from falaj.tls import listener_files
from tests.falaj.runtime.test_platform import FALAJ, _served_version, platform_env, start_up
from tests.support.models import sample_rows
from tests.support.ray_jobs import RayHead


def _certificates(directory: Path) -> dict[str, Path]:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    files = {
        "cert": directory / "listener.pem",
        "key": directory / "listener-key.pem",
        "ca": directory / "ca.pem",
    }
    issued.private_key_pem.write_to_path(str(files["key"]))
    issued.cert_chain_pems[0].write_to_path(str(files["cert"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    return files


def test_a_certificate_without_its_key_or_unreadable_is_refused_naming_the_setting(
    tmp_path: Path,
) -> None:
    files = _certificates(tmp_path)
    with pytest.raises(ConfigError, match="FALAJ_TLS_CERT_FILE is set without FALAJ_TLS_KEY_FILE"):
        Settings.from_env({"FALAJ_TLS_CERT_FILE": str(files["cert"])})
    other_key = trustme.CA().issue_cert("127.0.0.1").private_key_pem
    other_key.write_to_path(str(tmp_path / "other-key.pem"))
    mismatched = Settings(tls_cert_file=files["cert"], tls_key_file=tmp_path / "other-key.pem")
    with pytest.raises(ConfigError, match="cannot serve TLS") as caught:
        listener_files(mismatched)
    # The message names the files, never their contents.
    assert "PRIVATE KEY" not in str(caught.value)
    missing = Settings(tls_cert_file=tmp_path / "absent.pem", tls_key_file=files["key"])
    with pytest.raises(ConfigError, match=r"absent\.pem"):
        listener_files(missing)


@pytest.mark.ray
def test_every_listener_serves_tls_and_the_loop_runs_over_it(
    tmp_path: Path, ray_head: RayHead
) -> None:
    files = _certificates(tmp_path)
    env = platform_env(
        ray_head,
        FALAJ_TLS_CERT_FILE=str(files["cert"]),
        FALAJ_TLS_KEY_FILE=str(files["key"]),
        FALAJ_TLS_CA_FILE=str(files["ca"]),
    )
    home = tmp_path / ".falaj"
    version = _served_version(home)
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("FALAJ_")})
    settings = settings.model_copy(update={"home": home})
    up = start_up(tmp_path, home, env)
    state_file = home / "run" / "platform.json"
    try:
        up.wait_ready(state_file.exists, timeout_s=120.0)
        state = json.loads(state_file.read_text())
        listeners = [
            state["broker"],
            state["router"],
            state["control"],
            *state["functions"].values(),
        ]
        assert all(url.startswith("https://") for url in listeners), listeners

        token = (home / "keys" / "platform-admin.token").read_text()
        with PlatformClient.from_settings(settings, token=token) as client:
            up.wait_ready(lambda: client.model_ready("fraud", {version}), timeout_s=60.0)
            # router -> predictor (https), answered.
            prediction = client.predict("fraud", sample_rows(3, seed=5).tolist())
            assert prediction.version == version and len(prediction.probabilities) == 3
            # router -> broker: the payload log reached the broker over https.
            client.wait_for(EventType.INFERENCE_LOGGED, timeout_s=60.0)
            # storage source -> broker -> ingest function -> broker, every hop https.
            landing = home / "landing" / "transactions"
            landing.mkdir(parents=True, exist_ok=True)
            generate_transactions(40, seed=3, bad_rows=0).to_csv(landing / ".t.part", index=False)
            (landing / ".t.part").rename(landing / "t.csv")
            client.wait_for(EventType.DATA_INGESTED, timeout_s=120.0)
            metadata = httpx.get(
                f"{state['router']}/v2/models/fraud",
                headers={"Authorization": f"Bearer {token}"},
                verify=str(files["ca"]),
            ).json()
        grpc_port = metadata["status"][str(version)]["grpc_port"]

        for url in listeners:
            # Plain HTTP to a TLS listener is no conversation at all...
            with pytest.raises(httpx.HTTPError):
                httpx.get(url.replace("https://", "http://", 1) + "/", timeout=5.0)
            # ...and a client that does not trust the platform's CA is refused the handshake.
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                httpx.get(url + "/", timeout=5.0)

        credentials = grpc.ssl_channel_credentials(root_certificates=files["ca"].read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{grpc_port}", credentials) as channel:
            assert (
                GRPCInferenceServiceStub(channel)
                .ServerLive(pb.ServerLiveRequest(), timeout=10)
                .live
            )
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            with pytest.raises(grpc.RpcError) as plaintext:
                GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10)
            assert plaintext.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        subprocess.run(
            [FALAJ, "down", "--home", str(home)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        up.stop()
