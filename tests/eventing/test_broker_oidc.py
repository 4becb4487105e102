"""The broker's ingress with an identity provider: JWTs in, role checks, refusals audited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cloudevents.conversion import to_binary

from falaj.context import Context
from falaj.settings import Settings
from tests.eventing.conftest import BrokerFactory, training_requested
from tests.support.identity_provider import AUDIENCE, IdentityProvider, serve_identity_provider


@pytest.fixture
def provider() -> Iterator[IdentityProvider]:
    yield from serve_identity_provider()


@pytest.fixture
def settings(tmp_path: Path, provider: IdentityProvider) -> Settings:
    return Settings(home=tmp_path / ".falaj", oidc_issuer=provider.issuer, oidc_audience=AUDIENCE)


def test_an_engineer_with_a_jwt_publishes_a_viewer_may_not_and_a_stale_token_is_refused(
    start_broker: BrokerFactory, ctx: Context, provider: IdentityProvider
) -> None:
    running = start_broker()
    headers, body = to_binary(training_requested())

    def post(token: str) -> httpx.Response:
        return httpx.post(
            running.url, headers={**headers, "Authorization": f"Bearer {token}"}, content=body
        )

    accepted = post(provider.token(sub="eng@example.ae", roles=["ml-engineer"]))
    assert accepted.status_code == 202, accepted.text
    viewer = post(provider.token(sub="ops@example.ae", roles="viewer"))
    assert viewer.status_code == 403 and "publish-event" in viewer.json()["error"]
    stale = provider.token(sub="eng@example.ae", lifetime_s=60, issued_ago_s=600)
    expired = post(stale)
    assert expired.status_code == 401 and "expired" in expired.json()["error"]
    assert stale not in expired.text

    assert [e["type"] for e in running.events()] == ["dev.falaj.training.requested"]
    refusals = [e for e in ctx.audit.entries() if e["action"] == "auth.refused"]
    assert [e["actor"] for e in refusals] == ["ops@example.ae", "unknown"]
    assert all(stale not in str(e) for e in ctx.audit.entries())
