"""A stand-in OIDC identity provider: real RSA keys, a discovery document and a JWKS over HTTP."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from falaj.runtime.processes import free_port

AUDIENCE = "falaj-platform"


@dataclass
class IdentityProvider:
    issuer: str
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)

    def add_key(self, kid: str) -> rsa.RSAPrivateKey:
        """Publish a new signing key (a rotation, when others exist)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys[kid] = key
        return key

    def jwks(self) -> dict[str, Any]:
        published = []
        for kid, key in self.keys.items():
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            published.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": published}

    def token(
        self,
        *,
        kid: str = "k1",
        key: rsa.RSAPrivateKey | None = None,
        lifetime_s: float = 300.0,
        issued_ago_s: float = 0.0,
        **claims: Any,
    ) -> str:
        now = time.time() - issued_ago_s
        payload = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "alice@example.ae",
            "iat": int(now),
            "exp": int(now + lifetime_s),
            "roles": ["ml-engineer"],
            **claims,
        }
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, key or self.keys[kid], algorithm="RS256", headers={"kid": kid})


def serve_identity_provider() -> Iterator[IdentityProvider]:
    """Serve discovery and JWKS on a free loopback port until the generator is closed."""
    port = free_port()
    provider = IdentityProvider(issuer=f"http://127.0.0.1:{port}/realms/falaj")
    provider.add_key("k1")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/realms/falaj/.well-known/openid-configuration":
                body = {"issuer": provider.issuer, "jwks_uri": provider.issuer + "/certs"}
            elif self.path == "/realms/falaj/certs":
                body = provider.jwks()
            else:
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
