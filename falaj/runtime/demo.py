"""The demo story: the whole loop on real components, from a CSV to a canary.

1. A CSV of card transactions (a few rows broken on purpose) lands in the
   landing folder of the ``transactions`` dataset; the storage source, the
   broker and the ingest function take it into Feast; bad rows are quarantined
   with their reasons.
2. ``data.ingested`` launches a Ray job that trains version 1, exports it to
   ONNX, signs and encrypts it; the rollout function serves it at 100%.
3. Normal traffic is predicted and logged; the drift function sees no drift.
4. Traffic shifts (and new, shifted labelled data lands): drift is detected,
   retraining makes version 2, which goes out as a canary beside version 1.
5. The canary's traffic is answered, and the transactions' real outcomes come
   back; the router judges the canary on them (accuracy, errors, latency) and
   promotes it, or rolls it back when it is worse. Nobody steps in.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falaj.audit import AuditLog
from falaj.auth import Role
from falaj.client import PlatformClient
from falaj.demo.data import generate_transactions, inference_rows, labelled_inference_rows
from falaj.errors import AuditTampered, FalajError
from falaj.events import EventType
from falaj.feature_repo import load_repo
from falaj.runtime.platform import LocalPlatform
from falaj.settings import Settings

MODEL = "fraud"
#: The demo's dataset: its files land in ``landing/transactions/``.
DATASET = "transactions"
Step = Callable[[str], None]
#: How ``DemoStory.run`` names the platform's start-up lines among its steps.
START_PREFIX = "start "
#: The steps ``DemoStory.run`` reports after those start-up lines: the story's
#: seven and the stop. ``falaj demo`` counts its progress bar with it.
STEPS = 8


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    rows: int = 4000
    bad_rows: int = 12
    seed: int = 7
    shift: float = 1.0
    canary_requests: int = 600
    step_timeout_s: float = 240.0


@dataclass
class DemoReport:
    versions: list[dict[str, Any]] = field(default_factory=list)
    split: dict[str, Any] = field(default_factory=dict)
    observed_split: dict[str, int] = field(default_factory=dict)
    #: The router's verdict on the canary: the model.deployed event of its promotion or rollback.
    verdict: dict[str, Any] = field(default_factory=dict)
    #: Accuracy of each variant over the outcomes reported during the canary.
    canary_accuracy: dict[str, Any] = field(default_factory=dict)
    drift: dict[str, Any] = field(default_factory=dict)
    ingested: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    audit_actions: dict[str, int] = field(default_factory=dict)
    audit_verified: bool = False
    audit_entries: int = 0


class DemoStory:
    def __init__(
        self, settings: Settings, config: DemoConfig, *, ray_address: str | None = None
    ) -> None:
        self.settings = settings
        self.config = config
        self.platform = LocalPlatform(settings, external_ray_address=ray_address)
        self.report = DemoReport()

    def run(self, step: Step) -> DemoReport:
        home = self.platform.paths.home
        if home.exists():
            shutil.rmtree(home)  # the demo always starts from nothing
        try:
            self.platform.up(progress=lambda what: step(START_PREFIX + what))
            token = self.platform.user_tokens[Role.PLATFORM_ADMIN]
            with PlatformClient.from_settings(self.settings, token=token) as client:
                self._story(client, step)
        finally:
            step("stop the platform")
            self.platform.down()
        self._summarise_audit()
        return self.report

    # -- the story -------------------------------------------------------------

    def _story(self, client: PlatformClient, step: Step) -> None:
        cfg = self.config
        features = list(load_repo(self.settings).model(MODEL).features)
        wait = self._waiter(client)

        step(f"land {cfg.rows} transactions ({cfg.bad_rows} broken on purpose)")
        self._land(
            "transactions-day1.csv",
            generate_transactions(cfg.rows, seed=cfg.seed, bad_rows=cfg.bad_rows),
        )
        ingested = wait(EventType.DATA_INGESTED, failure=EventType.DATA_REJECTED)
        self.report.ingested.append(ingested["data"])

        step("train version 1 on Ray (TorchTrainer -> ONNX, signed, encrypted)")
        wait(
            EventType.MODEL_REGISTERED,
            where=lambda d: d.get("version") == 1,
            failure=EventType.TRAINING_FAILED,
        )
        wait(EventType.MODEL_DEPLOYED, where=lambda d: d.get("stable_version") == 1)
        self._await_model(client, {1})

        step(f"predict {self.settings.drift_window} normal requests (no drift expected)")
        for row in inference_rows(self.settings.drift_window, seed=cfg.seed + 1, shift=0.0):
            client.predict(MODEL, [[row[f] for f in features]])

        step("new, shifted labelled data lands; production traffic shifts")
        self._land(
            "transactions-day2.csv",
            generate_transactions(cfg.rows // 2, seed=cfg.seed + 2, shift=cfg.shift),
        )
        day2 = wait(EventType.DATA_INGESTED, where=lambda d: "day2" in str(d.get("location")))
        self.report.ingested.append(day2["data"])
        for row in inference_rows(self.settings.drift_window, seed=cfg.seed + 3, shift=cfg.shift):
            client.predict(MODEL, [[row[f] for f in features]])

        step("drift detected -> retrain version 2 on Ray")
        drift = wait(EventType.DRIFT_DETECTED)
        self.report.drift = drift["data"]
        wait(
            EventType.MODEL_REGISTERED,
            where=lambda d: d.get("version") == 2,
            failure=EventType.TRAINING_FAILED,
        )
        deployed = wait(EventType.MODEL_DEPLOYED, where=lambda d: d.get("canary_version") == 2)
        self.report.split = deployed["data"]
        self._await_model(client, {1, 2})

        step(f"canary: {cfg.canary_requests} requests split between versions 1 and 2")
        observed: Counter[str] = Counter()
        outcomes: list[tuple[str, float]] = []
        rows = labelled_inference_rows(cfg.canary_requests, seed=cfg.seed + 4, shift=cfg.shift)
        for row, label in rows:
            prediction = client.predict(MODEL, [[row[f] for f in features]])
            observed[f"v{prediction.version} ({prediction.variant})"] += 1
            outcomes.append((prediction.inference_id, float(label)))
        self.report.observed_split = dict(observed)

        step("outcomes come back; the router promotes or rolls back the canary on them")
        self._await_logged(client, 2 * self.settings.drift_window + len(rows))
        client.report_outcomes(MODEL, outcomes)
        self.report.canary_accuracy = {
            name: variant.get("outcomes", {})
            for name, variant in client.ab_report(MODEL).get("variants", {}).items()
        }
        verdict = wait(
            EventType.MODEL_DEPLOYED,
            where=lambda d: (
                d.get("action") in ("promote", "rollback")
                and str(d.get("reason", "")).startswith("automatic")
            ),
        )
        self.report.verdict = verdict["data"]
        self.report.versions = [e["data"] for e in client.events(EventType.MODEL_REGISTERED)]
        self.report.quarantine = self._quarantined()

    # -- helpers ---------------------------------------------------------------

    def _waiter(self, client: PlatformClient) -> Callable[..., dict[str, Any]]:
        def alive() -> None:
            dead = [name for name, ok in self.platform.alive().items() if not ok]
            if dead:
                tails = "\n".join(
                    f"--- {p.name}\n{p.tail()}" for p in self.platform.processes if p.name in dead
                )
                raise FalajError(f"platform processes died: {', '.join(dead)}\n{tails}")

        def wait(event_type: EventType, **kwargs: Any) -> dict[str, Any]:
            return client.wait_for(
                event_type, timeout_s=self.config.step_timeout_s, alive=alive, **kwargs
            )

        return wait

    def _await_model(self, client: PlatformClient, versions: set[int]) -> None:
        """Wait until the router serves exactly ``versions``, all loaded and verified."""
        deadline = time.monotonic() + self.config.step_timeout_s
        while not client.model_ready(MODEL, versions):
            if time.monotonic() > deadline:
                raise FalajError(
                    f"the router did not serve {MODEL} versions {sorted(versions)} in time "
                    "(see logs/router.log)"
                )
            time.sleep(0.25)  # polling a readiness endpoint, as a kubelet does

    def _await_logged(self, client: PlatformClient, predictions: int) -> None:
        """Wait until the router's metrics hold ``predictions`` canary-phase answers.

        Predictions reach them through the payload log, off the request path;
        an outcome reported before its prediction got there would match nothing.
        """
        deadline = time.monotonic() + self.config.step_timeout_s
        while True:
            variants = client.ab_report(MODEL).get("variants", {})
            logged = sum(int(v["predictions"]["count"]) for v in variants.values())
            if logged >= predictions:
                return
            if time.monotonic() > deadline:
                raise FalajError(f"only {logged} of {predictions} predictions were logged in time")
            time.sleep(0.25)  # polling the router's metrics, as a dashboard does

    def _land(self, name: str, frame: Any) -> None:
        landing = self.platform.paths.landing / DATASET
        landing.mkdir(parents=True, exist_ok=True)
        partial = landing / f".{name}.part"
        frame.to_csv(partial, index=False)
        partial.rename(landing / name)  # the source only sees complete files

    def _quarantined(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for path in sorted(self.platform.paths.quarantine.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                if line.strip():
                    rows.append(json.loads(line))
        return rows

    def _summarise_audit(self) -> None:
        audit = AuditLog(self.platform.paths.audit)
        actions: Counter[str] = Counter(entry["action"] for entry in audit.entries())
        self.report.audit_actions = dict(sorted(actions.items()))
        try:
            self.report.audit_entries = audit.verify().entries
            self.report.audit_verified = True
        except AuditTampered:
            self.report.audit_verified = False


def demo_settings(settings: Settings) -> Settings:
    """The platform's settings, sized for a story told in minutes on two cores."""
    return settings.model_copy(
        update={
            # One drift alert per version is the story; a long cooldown keeps the
            # canary's own traffic from starting a third training mid-demo.
            "drift_cooldown_s": 3600.0,
            # A 10% canary of 600 requests answers ~60: judged at 30 of each.
            "rollback_min_requests": 30,
            "canary_min_outcomes": 30,
        }
    )


def demo_home(base: Path) -> Path:
    return base / ".falaj" / "demo"
