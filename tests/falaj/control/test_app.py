"""The control API in process (Starlette's test client): login, sessions, the access table, input.

The browser tests (tests/e2e/test_dashboard.py) drive the same app in Chromium
on a running platform; these cover every role and every refusal cheaply.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from falaj.auth import PERMISSIONS, Action, Role
from falaj.context import Context
from falaj.control.app import PAGES, ControlAPI, create_app
from falaj.control.sessions import CSRF_HEADER, SESSION_COOKIE
from falaj.deployments import DeploymentStore, TrafficSplit, now_iso
from falaj.runtime.processes import free_port
from falaj.settings import Settings
from tests.support.models import WEIGHTS_V1, WEIGHTS_V2, register

#: Roles a person logs in as (the service role is the platform's own).
PEOPLE = [role for role in Role if role is not Role.SERVICE]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Nothing listens on these: the broker and the router "do not answer".
    return Settings(home=tmp_path / ".falaj", broker_port=free_port(), router_port=free_port())


@pytest.fixture
def tokens(ctx: Context) -> dict[Role, str]:
    return {role: ctx.tokens.issue(f"local-{role}", role) for role in Role}


@pytest.fixture
def app(ctx: Context) -> Iterator[TestClient]:
    with TestClient(create_app(ControlAPI(ctx, publisher=None)), follow_redirects=False) as client:
        yield client


def login(app: TestClient, token: str, target: str = "/") -> str:
    """Log in; the session's CSRF token."""
    response = app.post("/login", data={"token": token, "next": target})
    assert response.status_code == 303, response.text
    page = app.get("/")
    assert page.status_code == 200
    return page.text.split('data-csrf="', 1)[1].split('"', 1)[0]


def audited(ctx: Context, action: str) -> list[dict[str, object]]:
    return [e for e in ctx.audit.entries() if e["action"] == action]


def with_canary(ctx: Context) -> None:
    stable, canary = register(ctx, WEIGHTS_V1), register(ctx, WEIGHTS_V2)
    with DeploymentStore(ctx) as store:
        store.set(
            TrafficSplit(
                model="fraud",
                stable_version=stable,
                canary_version=canary,
                canary_percent=20,
                updated=now_iso(),
            )
        )


# -- login and sessions ------------------------------------------------------------------------


def test_a_page_without_a_session_goes_to_login_and_comes_back_after(
    app: TestClient, ctx: Context, tokens: dict[Role, str]
) -> None:
    first = app.get("/drift")
    assert first.status_code == 303
    assert first.headers["location"] == "/login?next=%2Fdrift"
    form = app.get(first.headers["location"])
    assert form.status_code == 200 and 'value="/drift"' in form.text

    logged_in = app.post("/login", data={"token": tokens[Role.VIEWER], "next": "/drift"})
    assert logged_in.status_code == 303
    assert logged_in.headers["location"] == "/drift"
    cookie = logged_in.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert tokens[Role.VIEWER] not in cookie  # the cookie names a session, not the token
    assert app.get("/drift").status_code == 200
    [entry] = audited(ctx, "auth.login")
    assert (entry["actor"], entry["role"]) == ("local-viewer", "viewer")


def test_a_wrong_token_is_refused_audited_and_never_echoed(app: TestClient, ctx: Context) -> None:
    wrong = "flj_not-a-token-anyone-was-given"
    response = app.post("/login", data={"token": wrong, "next": "/"})
    assert response.status_code == 401
    assert "unknown bearer token" in response.text
    assert wrong not in response.text
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    [entry] = audited(ctx, "auth.refused")
    assert entry["resource"] == "control:/login"
    assert wrong not in json.dumps(entry)
    assert app.post("/login", data={"next": "/"}).status_code == 401  # no token at all


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "models"]
)
def test_login_never_sends_the_browser_off_this_site(
    app: TestClient, tokens: dict[Role, str], target: str
) -> None:
    response = app.post("/login", data={"token": tokens[Role.VIEWER], "next": target})
    assert response.headers["location"] == "/"


def test_logging_out_ends_the_session(app: TestClient, tokens: dict[Role, str]) -> None:
    csrf = login(app, tokens[Role.VIEWER])
    assert app.post("/logout").status_code == 403  # a POST without its CSRF token
    out = app.post("/logout", data={"csrf": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    app.cookies.clear()
    assert app.get("/").status_code == 303


def test_a_revoked_token_ends_its_sessions_at_once(
    app: TestClient, ctx: Context, tokens: dict[Role, str]
) -> None:
    login(app, tokens[Role.VIEWER])
    admin = {"Authorization": f"Bearer {tokens[Role.PLATFORM_ADMIN]}"}
    revoked = app.delete("/api/tokens/local-viewer", headers=admin)
    assert revoked.status_code == 200 and revoked.json() == {
        "subject": "local-viewer",
        "revoked": 1,
    }
    assert app.get("/models").headers["location"] == "/login?next=%2Fmodels"
    [entry] = audited(ctx, "token.revoked")
    assert (entry["actor"], entry["resource"]) == ("local-platform-admin", "token/local-viewer")
    again = app.delete("/api/tokens/local-viewer", headers=admin)
    assert again.status_code == 404 and "GET /api/tokens" in again.json()["error"]


# -- the access table --------------------------------------------------------------------------


@pytest.mark.parametrize("role", PEOPLE, ids=str)
def test_each_page_and_its_json_follow_the_access_table(
    ctx: Context, tokens: dict[Role, str], role: Role
) -> None:
    allowed = PERMISSIONS[role]
    with TestClient(create_app(ControlAPI(ctx, None)), follow_redirects=False) as browser:
        login(browser, tokens[role])
        for page in PAGES:
            status = browser.get(page.path).status_code
            expected = 200 if page.needs in allowed else 403
            assert status == expected, f"{role} on {page.path}: {status}, expected {expected}"
    with TestClient(create_app(ControlAPI(ctx, None)), follow_redirects=False) as script:
        bearer = {"Authorization": f"Bearer {tokens[role]}"}
        for page in PAGES:
            api = "/api/tokens" if page.name == "admin" else f"/api/{page.name}"
            status = script.get(api, headers=bearer).status_code
            expected = 200 if page.needs in allowed else 403
            assert status == expected, f"{role} on {api}: {status}, expected {expected}"


@pytest.mark.parametrize("role", PEOPLE, ids=str)
def test_the_navigation_shows_only_what_the_role_may_open(
    app: TestClient, tokens: dict[Role, str], role: Role
) -> None:
    login(app, tokens[role])
    page = app.get("/").text
    for item in PAGES:
        shown = f'data-page="{item.name}"' in page
        assert shown is (item.needs in PERMISSIONS[role]), f"{role}: {item.name}"


def test_promote_and_rollback_are_drawn_only_for_a_role_that_may_deploy(
    app: TestClient, ctx: Context, tokens: dict[Role, str]
) -> None:
    with_canary(ctx)
    for role in PEOPLE:
        app.cookies.clear()
        login(app, tokens[role])
        page = app.get("/rollouts").text
        drawn = "/api/rollouts/fraud/promote" in page and "/api/rollouts/fraud/rollback" in page
        assert drawn is (Action.DEPLOY in PERMISSIONS[role]), role


def test_a_session_may_promote_only_with_its_csrf_token(
    app: TestClient, ctx: Context, tokens: dict[Role, str]
) -> None:
    with_canary(ctx)
    csrf = login(app, tokens[Role.ML_ENGINEER])
    forged = app.post("/api/rollouts/fraud/promote")  # what another site's form would send
    assert forged.status_code == 403 and CSRF_HEADER in forged.json()["error"]
    with DeploymentStore(ctx) as store:
        assert store.get("fraud").canary_version == 2  # type: ignore[union-attr]

    promoted = app.post("/api/rollouts/fraud/promote", headers={CSRF_HEADER: csrf})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json() == {
        "model": "fraud",
        "action": "promote",
        "changed": True,
        "before": "stable version 1, canary version 2 at 20%",
        "after": "stable version 2",
        "announced": False,
    }
    with DeploymentStore(ctx) as store:
        split = store.get("fraud")
    assert split is not None and (split.stable_version, split.canary_version) == (2, None)
    [entry] = audited(ctx, "model.promoted")
    assert (entry["actor"], entry["role"]) == ("local-ml-engineer", "ml-engineer")
    assert entry["details"]["requested_by"] == "/falaj/control"  # type: ignore[index]
    # The traffic page's loop, from the audit log, ends with it.
    [rollout] = app.get("/api/rollouts").json()["rollouts"]
    assert [step["step"] for step in rollout["loop"]] == [
        "model.registered",
        "model.registered",
        "model.promoted",
    ]
    assert rollout["loop"][-1]["by"] == "local-ml-engineer"


def test_a_viewer_may_not_promote_and_the_refusal_is_audited(
    app: TestClient, ctx: Context, tokens: dict[Role, str]
) -> None:
    with_canary(ctx)
    viewer = {"Authorization": f"Bearer {tokens[Role.VIEWER]}"}
    refused = app.post("/api/rollouts/fraud/promote", headers=viewer)
    assert refused.status_code == 403
    assert "may not deploy" in refused.json()["error"]
    [entry] = audited(ctx, "auth.refused")
    assert (entry["actor"], entry["resource"]) == (
        "local-viewer",
        "control:/api/rollouts/fraud/promote",
    )
    assert audited(ctx, "model.promoted") == []
    unknown = app.post("/api/rollouts/fraud/promote", headers={"Authorization": "Bearer nope"})
    assert unknown.status_code == 401 and unknown.headers["www-authenticate"] == "Bearer"


def test_an_admin_issues_a_token_shown_once_and_audited_without_it(
    app: TestClient, ctx: Context, tokens: dict[Role, str]
) -> None:
    admin = {"Authorization": f"Bearer {tokens[Role.PLATFORM_ADMIN]}"}
    issued = app.post("/api/tokens", json={"subject": "alice", "role": "auditor"}, headers=admin)
    assert issued.status_code == 201
    token = issued.json()["token"]
    alice = {"Authorization": f"Bearer {token}"}
    assert app.get("/api/audit", headers=alice).status_code == 200
    assert app.get("/api/tokens", headers=alice).status_code == 403
    holders = app.get("/api/tokens", headers=admin).json()["holders"]
    assert {"subject": "alice", "role": "auditor", "actions": ["read", "read-audit"]} in holders
    assert token not in app.get("/api/tokens", headers=admin).text
    [entry] = audited(ctx, "token.issued")
    assert entry["details"] == {"role": "auditor"}
    assert token not in (ctx.paths.audit / "audit.jsonl").read_text()


# -- input -------------------------------------------------------------------------------------


def test_bad_input_is_refused_saying_what_was_expected(
    app: TestClient, ctx: Context, tokens: dict[Role, str]
) -> None:
    with_canary(ctx)
    admin = {"Authorization": f"Bearer {tokens[Role.PLATFORM_ADMIN]}"}
    for limit in ("abc", "0", "100000", "-1"):
        response = app.get(f"/api/audit?limit={limit}", headers=admin)
        assert response.status_code == 400, limit
        assert "expected limit to be a whole number from 1 to 500" in response.json()["error"]
    wrong_type = app.get("/api/events?type=dev.falaj.nothing", headers=admin)
    assert wrong_type.status_code == 400
    assert "expected type to be an event type of the catalog" in wrong_type.json()["error"]
    cases = [
        ("/api/tokens", b"[1, 2]", "expected a JSON object as the body, got a list"),
        ("/api/tokens", b"{not json", "expected a JSON object as the body"),
        ("/api/tokens", b'{"subject": "x", "role": "king"}', "expected a role, one of viewer"),
        ("/api/tokens", b'{"role": "viewer"}', "expected a subject"),
        ("/api/tokens", b"{}" + b" " * 9000, "expected a body of at most 8192 bytes"),
        ("/api/rollouts/fraud/canary", b"{}", "expected one of promote, rollback"),
    ]
    for path, body, message in cases:
        response = app.post(path, content=body, headers=admin)
        assert response.status_code == 400, (path, body[:20], response.text)
        assert message in response.json()["error"]
    missing = app.get("/api/models/fraud/9", headers=admin)
    assert missing.status_code == 404
    nothing_to_promote = app.post("/api/rollouts/fraud/promote", headers=admin)
    assert nothing_to_promote.status_code == 200
    again = app.post("/api/rollouts/fraud/promote", headers=admin)
    assert again.status_code == 409 and "no canary" in again.json()["error"]


def test_every_response_carries_the_security_headers_and_only_known_files_are_served(
    app: TestClient, tokens: dict[Role, str]
) -> None:
    login(app, tokens[Role.VIEWER])
    for path in ("/", "/login", "/static/dashboard.js", "/api/overview", "/healthz"):
        headers = app.get(path).headers
        assert "script-src 'self'" in headers["content-security-policy"], path
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
    assert app.get("/").headers["cache-control"] == "no-store"
    plotly_js = app.get("/static/plotly.min.js")
    assert plotly_js.status_code == 200 and len(plotly_js.content) > 1_000_000
    for name in ("../app.py", "app.py", "..%2Fapp.py"):
        assert app.get(f"/static/{name}").status_code == 404


# -- what the pages show -----------------------------------------------------------------------


def test_reading_pages_creates_no_store(
    app: TestClient, ctx: Context, tokens: dict[Role, str]
) -> None:
    login(app, tokens[Role.PLATFORM_ADMIN])
    for page in PAGES:
        assert app.get(page.path).status_code == 200, page.path
    for store in (ctx.paths.serving, ctx.paths.training, ctx.paths.drift, ctx.paths.quarantine):
        assert not store.exists(), store


def test_a_broker_that_does_not_answer_is_shown_not_a_failed_page(
    app: TestClient, tokens: dict[Role, str]
) -> None:
    login(app, tokens[Role.VIEWER])
    page = app.get("/events")
    assert page.status_code == 200
    assert (
        "The broker does not answer" in page.text and "is &#39;falaj up&#39; running?" in page.text
    )


def test_the_audit_page_says_whether_the_chain_verifies(
    app: TestClient, ctx: Context, tokens: dict[Role, str]
) -> None:
    login(app, tokens[Role.AUDITOR])
    verified = app.get("/audit").text
    assert "The hash chain verifies: 1 entries" in verified  # the login itself
    log = ctx.paths.audit / "audit.jsonl"
    log.write_text(log.read_text().replace('"auth.login"', '"auth.logout"'))
    tampered = app.get("/api/audit").json()
    assert tampered["verified"] is False
    assert "line 1 was edited" in tampered["error"]
    assert [e["action"] for e in tampered["recent"]] == ["auth.logout"]  # still shown
    assert "does NOT verify" in app.get("/audit").text


def test_a_version_page_shows_its_lineage_and_its_history(
    app: TestClient, ctx: Context, tokens: dict[Role, str]
) -> None:
    with_canary(ctx)
    login(app, tokens[Role.VIEWER])
    page = app.get("/models/fraud/2")
    assert page.status_code == 200
    version = app.get(
        "/api/models/fraud/2", headers={"Authorization": f"Bearer {tokens[Role.VIEWER]}"}
    )
    shown = version.json()
    assert shown["digest"] in page.text
    assert shown["aliases"] == ["canary"] and shown["serving"] == "canary (20%)"
    assert shown["lineage"] == {"training_job_id": "test"}
    assert [step["action"] for step in shown["history"]] == [
        e["action"]
        for e in ctx.audit.entries()
        if e["resource"] == "model/fraud/2" and e["action"].startswith("model.")
    ]
    assert shown["history"], "registering a version is audited"
    assert app.get("/models/fraud/9").status_code == 404


def test_what_people_do_is_counted_for_prometheus(
    app: TestClient, ctx: Context, tokens: dict[Role, str]
) -> None:
    with_canary(ctx)
    viewer = {"Authorization": f"Bearer {tokens[Role.VIEWER]}"}
    engineer = {"Authorization": f"Bearer {tokens[Role.ML_ENGINEER]}"}
    assert app.post("/login", data={"token": "flj_wrong"}).status_code == 401
    assert app.post("/login", data={"token": tokens[Role.AUDITOR]}).status_code == 303
    assert app.post("/api/rollouts/fraud/promote", headers=viewer).status_code == 403
    assert app.post("/api/rollouts/fraud/promote", headers=engineer).status_code == 200
    assert app.post("/api/rollouts/fraud/promote", headers=engineer).status_code == 409
    assert app.post("/api/rollouts/fraud/nonsense", headers=engineer).status_code == 400

    assert app.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    app.cookies.clear()
    assert app.get("/metrics").status_code == 401  # a scraper gets a status, not a login page
    scrape = app.get("/metrics", headers=viewer)
    assert scrape.status_code == 200
    counted = {
        (sample.labels["action"], sample.labels["outcome"]): sample.value
        for family in text_string_to_metric_families(scrape.text)
        for sample in family.samples
        if sample.name == "falaj_control_actions_total"
    }
    assert counted == {
        ("login", "refused"): 1,
        ("login", "success"): 1,
        ("promote", "refused"): 1,
        ("promote", "success"): 1,
        ("promote", "failed"): 1,
    }
