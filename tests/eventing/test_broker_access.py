"""Every role against the broker's endpoints: what the access table gives it, and no more."""

from __future__ import annotations

import httpx
from cloudevents.conversion import to_binary

from falaj.auth import PERMISSIONS, Action, Role
from falaj.context import Context
from tests.eventing.conftest import BrokerFactory, training_requested


def test_each_role_may_publish_list_and_replay_as_the_table_says(
    start_broker: BrokerFactory, ctx: Context
) -> None:
    running = start_broker()
    seen: dict[tuple[str, str], int] = {}
    expected: dict[tuple[str, str], int] = {}
    for role in Role:
        token = ctx.tokens.issue(f"someone-{role}", role)
        auth = {"Authorization": f"Bearer {token}"}
        headers, body = to_binary(training_requested())
        statuses = {
            Action.PUBLISH_EVENT: httpx.post(
                running.url, headers={**headers, **auth}, content=body
            ).status_code,
            Action.READ: httpx.get(running.url + "events", headers=auth).status_code,
            # No dead letter 999: an allowed caller learns that (404); others do not.
            Action.REPLAY: httpx.post(
                running.url + "dead-letters/999/replay", headers=auth
            ).status_code,
        }
        allowed_status = {Action.PUBLISH_EVENT: 202, Action.READ: 200, Action.REPLAY: 404}
        for action, status in statuses.items():
            seen[(str(role), str(action))] = status
            expected[(str(role), str(action))] = (
                allowed_status[action] if action in PERMISSIONS[role] else 403
            )
    assert seen == expected
    refused = [e for e in ctx.audit.entries() if e["action"] == "auth.refused"]
    assert len(refused) == sum(1 for status in seen.values() if status == 403)
