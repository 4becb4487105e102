"""The dashboard in real headless Chromium, on the platform the demo left behind.

``falaj up`` starts again on the demo's home (its registry, drift history,
training runs, quarantine, audit log and the broker's event log). The test
sets up what a user would find on a working day, a canary taking traffic and a
dead letter, the way a user would: through the rollout rules, the router and
the broker. Then people of four roles use the dashboard: pages load, plots
render, an ML engineer promotes the canary, a platform admin replays the dead
letter, and a viewer can neither see nor press promote. Screenshots of the
main pages go to docs/screenshots/, which the README shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Dialog, Page, expect

from falaj.auth import Role
from falaj.client import PlatformClient
from falaj.context import Context
from falaj.demo.data import inference_rows
from falaj.deployments import DeploymentStore
from falaj.events import EventType, ObjectCreated, make_event
from falaj.feature_repo import load_repo
from falaj.objects import LANDING_BUCKET
from falaj.publisher import EventPublisher
from falaj.registry import ModelRegistry
from falaj.rollouts import RolloutAction, Rollouts, RolloutStep
from falaj.runtime.processes import ReadyCheck, free_port
from falaj.settings import PROJECT_ROOT, Settings
from tests.eventing.conftest import wait_until
from tests.falaj.runtime.test_platform import platform_env, start_up
from tests.support.browser import chromium
from tests.support.notifications import AWS_PUT, record
from tests.support.ray_jobs import RayHead

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

MODEL = "fraud"
#: Where the screenshots go; the README shows them from here.
SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
#: The pages an ML engineer's screenshots show, in the README's order.
SHOWN = ("overview", "models", "rollouts", "drift", "events", "quarantine", "training")
FULL_PAGE = frozenset({"rollouts", "drift"})


@dataclass(frozen=True)
class Dashboard:
    settings: Settings
    tokens: dict[Role, str]
    #: The version the test made the canary (the one the demo did not leave stable).
    canary: int
    #: The dead letter the test caused: a notification of an object that never landed.
    dead_letter: int

    @property
    def url(self) -> str:
        return self.settings.control_url

    def client(self, role: Role) -> PlatformClient:
        return PlatformClient.from_settings(self.settings, token=self.tokens[role])


@pytest.fixture(scope="module")
def dashboard(
    demo_run: dict[str, Any], ray_head: RayHead, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dashboard]:
    home = Path(demo_run["home"])
    env = platform_env(ray_head, FALAJ_GRPC_PORT=str(free_port()))
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("FALAJ_")})
    settings = settings.model_copy(update={"home": home})
    up = start_up(tmp_path_factory.mktemp("dashboard"), home, env)
    try:
        # The control API starts last: once it answers, everything before it does.
        up.wait_ready(ReadyCheck("127.0.0.1", settings.control_port, "/healthz"), timeout_s=180)
        yield _arranged(settings)
    finally:
        up.stop()
    assert not (home / "run" / "platform.json").exists(), "falaj up did not stop its processes"


def _arranged(settings: Settings) -> Dashboard:
    ctx = Context.create(settings, actor="test")
    tokens = {role: (ctx.paths.keys / f"{role}.token").read_text().strip() for role in Role}
    with DeploymentStore(ctx) as store:
        split = store.get(MODEL)
        assert split is not None and split.canary_version is None, split
        canary = 1 if split.stable_version == 2 else 2
        Rollouts(ctx, store, ModelRegistry(ctx)).apply(
            RolloutStep(
                model=MODEL,
                action=RolloutAction.CANARY,
                version=canary,
                percent=50,
                reason="a canary for the dashboard test",
                requested_by="/tests/e2e",
            ),
            actor="test",
        )
    features = list(load_repo(settings).model(MODEL).features)
    with PlatformClient.from_settings(settings, token=tokens[Role.ML_ENGINEER]) as client:
        wait_until(lambda: client.model_ready(MODEL, {1, 2}), 120, "the router serves both")
        for row in inference_rows(60, seed=11):
            client.predict(MODEL, [[row[f] for f in features]])
        never_landed = make_event(
            EventType.OBJECT_CREATED,
            ObjectCreated.model_validate(
                record(AWS_PUT, bucket=LANDING_BUCKET, raw_key="transactions/never-landed.csv")
            ),
            region=settings.region,
        )
        with EventPublisher(settings.broker_ingress, tokens[Role.ML_ENGINEER]) as publisher:
            publisher.publish(never_landed)

        def dead_letter() -> int | None:
            for letter in client.dead_letters():
                if letter["event_id"] == never_landed["id"]:
                    return int(letter["id"])
            return None

        wait_until(lambda: dead_letter() is not None, 60, "ingest dead-letters the notification")
        letter = dead_letter()
    assert letter is not None
    return Dashboard(settings, tokens, canary, letter)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as started:
        yield started


def logged_in(browser: Browser, dashboard: Dashboard, role: Role) -> Page:
    """A new browser context (its own cookies) logged in as ``role`` through the login form."""
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.goto(dashboard.url + "/")
    expect(page).to_have_url(dashboard.url + "/login?next=%2F")
    page.fill("#token", dashboard.tokens[role])
    page.click("button[type=submit]")
    expect(page).to_have_url(dashboard.url + "/")
    expect(page.locator(".role")).to_have_text(str(role))
    return page


def plots_drawn(page: Page) -> int:
    """Wait for every plot on the page to be drawn by plotly.js; how many there are."""
    areas = page.locator(".plot-area")
    for i in range(areas.count()):
        expect(areas.nth(i)).to_have_attribute("data-rendered", "true")
        expect(areas.nth(i).locator("svg.main-svg").first).to_be_visible()
    return areas.count()


def post_from(page: Page, path: str) -> int:
    """What the page's own session gets for a POST it sends with its CSRF token."""
    status: int = page.evaluate(
        """async (path) => (await fetch(path, {method: "POST", credentials: "same-origin",
              headers: {"x-csrf-token": document.body.dataset.csrf}})).status""",
        path,
    )
    return status


def accept(dialog: Dialog) -> None:
    dialog.accept()


def test_every_page_loads_and_draws_its_plots(browser: Browser, dashboard: Dashboard) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = logged_in(browser, dashboard, Role.ML_ENGINEER)
    drawn: dict[str, int] = {}
    for name in SHOWN:
        page.goto(dashboard.url + ("/" if name == "overview" else f"/{name}"))
        expect(page.locator("h1")).to_be_visible()
        drawn[name] = plots_drawn(page)
        # The whole page where plots run long; the first screen of a long table.
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=name in FULL_PAGE)
    # Models: the demo's two versions with their metrics, one plot of them.
    assert drawn["models"] == 1
    # Traffic: the split, configured beside observed, and the A/B tests against stable.
    assert drawn["rollouts"] == 1
    # Drift: one plot per statistic the demo scored, each with its threshold drawn.
    assert drawn["drift"] >= 4
    page.goto(dashboard.url + "/drift")
    plots_drawn(page)
    assert page.locator(".plot-area .shapelayer path").count() >= 4
    # Events: the newest events by type.
    assert drawn["events"] == 1
    # Training: each job's loss by epoch, from its progress events.
    assert drawn["training"] == 1


def test_the_pages_show_the_loop_as_it_happened(browser: Browser, dashboard: Dashboard) -> None:
    page = logged_in(browser, dashboard, Role.ML_ENGINEER)
    expect(page.locator("#audit-status")).to_contain_text("audit log verified")
    expect(page.locator("#processes")).to_contain_text("control")
    page.goto(dashboard.url + "/models")
    expect(page.locator("table.versions tbody tr")).to_have_count(2)
    page.goto(dashboard.url + "/rollouts")
    expect(page.locator(".rollout .split")).to_contain_text(f"canary v{dashboard.canary} 50%")
    expect(page.locator("table.variants tbody tr")).to_have_count(2)
    page.goto(dashboard.url + "/quarantine")
    # The demo broke 12 rows on purpose; each is kept with its reason.
    expect(page.locator("#quarantined-rows tbody tr")).to_have_count(12)
    page.goto(dashboard.url + "/training")
    finished = page.locator("#runs progress")
    assert finished.count() >= 2
    for i in range(finished.count()):
        assert finished.nth(i).get_attribute("value") == finished.nth(i).get_attribute("max")
    page.goto(dashboard.url + "/events")
    row = page.locator(f"tr[data-dead-letter='{dashboard.dead_letter}']")
    expect(row).to_contain_text("storage.object.created")
    # An ML engineer may not replay: the column is not drawn for them.
    expect(row.locator("button")).to_have_count(0)


def test_a_viewer_can_neither_see_nor_press_promote(browser: Browser, dashboard: Dashboard) -> None:
    page = logged_in(browser, dashboard, Role.VIEWER)
    expect(page.locator("nav a[data-page=audit]")).to_have_count(0)
    expect(page.locator("nav a[data-page=admin]")).to_have_count(0)
    page.goto(dashboard.url + "/rollouts")
    plots_drawn(page)
    expect(page.locator("button.action")).to_have_count(0)
    assert post_from(page, f"/api/rollouts/{MODEL}/promote") == 403
    with DeploymentStore(Context.create(dashboard.settings, actor="test")) as store:
        split = store.get(MODEL)
    assert split is not None and split.canary_version == dashboard.canary
    page.goto(dashboard.url + "/audit")
    expect(page.locator("p.error")).to_contain_text("may not read-audit")


def test_an_ml_engineer_promotes_the_canary(browser: Browser, dashboard: Dashboard) -> None:
    page = logged_in(browser, dashboard, Role.ML_ENGINEER)
    page.goto(dashboard.url + "/rollouts")
    page.on("dialog", accept)
    page.get_by_role("button", name=f"Promote v{dashboard.canary}").click()
    expect(page.locator("#notice")).to_contain_text(f"stable version {dashboard.canary}")
    expect(page.locator(".rollout .split")).not_to_contain_text("canary", timeout=10_000)
    ctx = Context.create(dashboard.settings, actor="test")
    with DeploymentStore(ctx) as store:
        split = store.get(MODEL)
    assert split is not None
    assert (split.stable_version, split.canary_version) == (dashboard.canary, None)
    promoted = [e for e in ctx.audit.entries() if e["action"] == "model.promoted"][-1]
    assert (promoted["actor"], promoted["role"]) == ("local-ml-engineer", "ml-engineer")
    with dashboard.client(Role.ML_ENGINEER) as client:
        announced = client.events(EventType.MODEL_DEPLOYED)[-1]
    assert announced["source"] == "/falaj/control"
    assert announced["data"]["stable_version"] == dashboard.canary


def test_a_platform_admin_replays_the_dead_letter(browser: Browser, dashboard: Dashboard) -> None:
    page = logged_in(browser, dashboard, Role.PLATFORM_ADMIN)
    page.goto(dashboard.url + "/events")
    page.on("dialog", accept)
    row = page.locator(f"tr[data-dead-letter='{dashboard.dead_letter}']")
    row.get_by_role("button", name="Replay").click()
    expect(page.locator("#notice")).to_have_class("ok")
    expect(row).to_contain_text("replayed", timeout=10_000)
    with dashboard.client(Role.PLATFORM_ADMIN) as client:
        [letter] = [d for d in client.dead_letters() if d["id"] == dashboard.dead_letter]
    assert letter["replayed"] is not None
    entries = Context.create(dashboard.settings, actor="test").audit.entries()
    replayed = [e for e in entries if e["action"] == "event.replayed"][-1]
    assert replayed["actor"] == "local-platform-admin"
    page.goto(dashboard.url + "/audit")
    expect(page.locator("#verify")).to_contain_text("The hash chain verifies")
    page.screenshot(path=str(SCREENSHOTS / "audit.png"))
