"""TLS for the local platform's listeners and for its clients of them, from the settings.

With ``FALAJ_TLS_CERT_FILE`` and ``FALAJ_TLS_KEY_FILE`` set, every listener
(broker, functions, router, model servers over REST and gRPC) serves that
certificate and nothing in plain HTTP; the platform's own URLs become
``https://``, and every client of them verifies the certificate against
``FALAJ_TLS_CA_FILE`` (a private CA) or the system's store. Unset, they listen
in plain HTTP: on a cluster the mesh's mTLS (``manifests/components/mesh-mtls``)
encrypts between pods instead, as KServe and Knative expect.

The files are read when a listener starts, so a bad path or a key that does not
match its certificate fails that start with the setting named, not a request.
"""

from __future__ import annotations

import ssl
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from falaj.errors import ConfigError
from falaj.settings import Settings

if TYPE_CHECKING:
    import grpc


def listener_files(settings: Settings) -> tuple[Path, Path] | None:
    """The certificate and key a listener serves, checked to load together; None: plain HTTP."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    cert, key = settings.tls_cert_file, settings.tls_key_file
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        # The reason is the library's (no such file, key values mismatch): never key material.
        raise ConfigError(
            f"FALAJ_TLS_CERT_FILE={cert} with FALAJ_TLS_KEY_FILE={key} cannot serve TLS: {exc}; "
            "expected a readable PEM certificate and the private key that matches it"
        ) from None
    return cert, key


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments that make a uvicorn listener serve TLS (empty: plain HTTP)."""
    files = listener_files(settings)
    if files is None:
        return {}
    return {"ssl_certfile": str(files[0]), "ssl_keyfile": str(files[1])}


def grpc_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The credentials of a gRPC listener, or None (insecure port)."""
    files = listener_files(settings)
    if files is None:
        return None
    import grpc

    return grpc.ssl_server_credentials([(files[1].read_bytes(), files[0].read_bytes())])


def client_verify(settings: Settings) -> ssl.SSLContext | bool:
    """What clients of the platform's URLs verify with: the private CA's context, or True."""
    if settings.tls_ca_file is None:
        return True
    return _ca_context(settings.tls_ca_file)


@cache
def _ca_context(ca_file: Path) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"FALAJ_TLS_CA_FILE={ca_file} cannot be read as PEM CA certificates: {exc}"
        ) from None
