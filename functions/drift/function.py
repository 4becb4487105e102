"""Drift scoring: production inputs against the training-time reference profile.

Each ``inference.logged`` event adds its batch to the open window of its
(model, version). A window is scored when it holds ``drift_window`` rows, or
when its first row is ``drift_window_s`` old (checked as events arrive): every
profiled feature, and the predictions, by every statistic that applies
(``falaj.drift_statistics``: PSI, KS and Wasserstein for numeric features, PSI,
chi-square and Jensen-Shannon for categorical ones), against the profile
stored with that version at training time — never rebuilt. The scores join the
version's time series (``falaj.drift_history``) and the window starts again.

The policy (``falaj.drift_policy``: per-statistic thresholds, minimum rows,
cool-down) decides whether the window raises ``drift.detected``, naming the
drifted features and every statistic past its threshold; the training launcher
turns that into a new version.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np

from falaj.drift_history import DriftHistory
from falaj.drift_policy import DriftPolicy, DriftVerdict, WindowScores
from falaj.drift_statistics import StatisticValue, import_scipy, score_column
from falaj.errors import EventError, FalajError
from falaj.events import DriftDetected, DriftFindingData, EventType, InferenceLogged, ParsedEvent
from falaj.function import CloudEventFunction
from falaj.logs import get_logger
from falaj.profile import PREDICTION, ColumnProfile, ReferenceProfile
from falaj.registry import ModelRegistry
from functions.drift.store import Window, WindowStore


class DriftFunction(CloudEventFunction):
    name = "drift"
    accepts = frozenset({EventType.INFERENCE_LOGGED})

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        # Injected so the cool-down and time windows can be tested without waiting.
        self._clock = clock
        self._history: DriftHistory | None = None
        self._windows: WindowStore | None = None
        self._registry: ModelRegistry | None = None
        self._policy: DriftPolicy | None = None
        self._executor: ThreadPoolExecutor | None = None
        # The reference never changes for a version, so it is verified once.
        self._profiles: dict[tuple[str, int], ReferenceProfile] = {}
        self.log = get_logger(function=self.name)

    def on_start(self) -> None:
        self._history = DriftHistory(self.ctx.paths.drift)
        self._windows = WindowStore(self._history)
        self._registry = ModelRegistry(self.ctx)
        self._policy = DriftPolicy.from_settings(self.ctx.settings)
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="drift-score")
        import_scipy()

    @property
    def windows(self) -> WindowStore:
        if self._windows is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._windows

    @property
    def policy(self) -> DriftPolicy:
        if self._policy is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._policy

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._history is not None:
            self._history.close()
            self._history = self._windows = None
        super().stop()

    def handle(self, event: ParsedEvent) -> None:
        data = event.data
        if not isinstance(data, InferenceLogged):
            raise EventError(f"{self.name} scores {EventType.INFERENCE_LOGGED} events only")
        predictions = _check_batch(data)
        # Loaded before anything is stored: an unknown or tampered version is
        # refused without growing a window nobody can ever score.
        profile = self._profile(data.model, data.version)
        now = self._clock()
        state = self.windows.append(
            data.model, data.version, event.id, data.inputs, predictions, now=now
        )
        settings = self.ctx.settings
        full = state.rows >= settings.drift_window
        aged = settings.drift_window_s > 0 and now - state.opened_at >= settings.drift_window_s
        if full or aged:
            self._close_window(data.model, data.version, profile, now)

    def _profile(self, model: str, version: int) -> ReferenceProfile:
        key = (model, version)
        if key not in self._profiles:
            if self._registry is None:
                raise FalajError(f"function {self.name} used before start()")
            self._profiles[key] = self._registry.load_verified(model, version).profile
        return self._profiles[key]

    def _close_window(
        self, model: str, version: int, profile: ReferenceProfile, now: float
    ) -> None:
        window = self.windows.window(model, version)
        scores = score_window(profile, window, self._executor)
        verdict = self.policy.verdict(
            scores,
            rows=window.rows,
            now=now,
            last_alert=self.windows.history.last_alert(model, version),
        )
        if verdict.alert:
            # Emitted before the window is closed: if the broker is down the
            # event is redelivered and the same window (deduplicated) is scored again.
            self.emit(
                EventType.DRIFT_DETECTED,
                drift_detected(model, version, window.rows, scores, verdict, self.policy),
                subject=f"{model}/{version}",
            )
        self.windows.close_window(
            model,
            version,
            window_end=datetime.fromtimestamp(now, UTC).isoformat(),
            rows=window.rows,
            scores=scores,
            verdict=verdict,
            alerted_at=now if verdict.alert else None,
        )
        self._export(model, version, scores, alerted=verdict.alert)
        self.log.info(
            "drift.window_scored",
            model=model,
            version=version,
            rows=window.rows,
            drifted=verdict.drifted_features,
            alerted=verdict.alert,
            held_back=verdict.held_back or None,
        )
        if verdict.alert:
            self.ctx.audit.record(
                "drift.detected",
                actor=self.ctx.actor,
                resource=f"model/{model}/{version}",
                region=self.ctx.settings.region,
                details={
                    "drifted_features": verdict.drifted_features,
                    "findings": [f.to_json() for f in verdict.findings],
                    "window_rows": window.rows,
                },
            )

    def _export(self, model: str, version: int, scores: WindowScores, *, alerted: bool) -> None:
        """The closed window's scores as gauges (the last window's stand), and the alert."""
        gauge = self.metrics.drift_score
        for feature, values in scores.items():
            for statistic, value in values.items():
                gauge.labels(model, str(version), feature, statistic).set(value.value)
        if alerted:
            self.metrics.drift_detected.labels(model).inc()


def score_window(
    profile: ReferenceProfile, window: Window, executor: Executor | None = None
) -> WindowScores:
    """Every statistic of every profiled feature the window carries, and of the predictions.

    With an ``executor`` the features are scored side by side: numpy lets go of
    the GIL in its sorts and searches, and two threads took a 60-feature,
    10,000-row window from 70 ms to 54 ms on two cores.
    """
    columns: list[tuple[str, ColumnProfile, np.ndarray]] = [
        (name, reference, column)
        for name, reference in profile.features.items()
        # A feature the window never carried (or only as NaN) has no distribution.
        if (column := window.columns.get(name)) is not None and np.isfinite(column).any()
    ]
    if profile.prediction is not None and window.predictions.size:
        columns.append((PREDICTION, profile.prediction, window.predictions))

    def score(item: tuple[str, ColumnProfile, np.ndarray]) -> dict[str, StatisticValue]:
        return score_column(item[1], item[2])

    scored = executor.map(score, columns) if executor is not None else map(score, columns)
    return {name: values for (name, _, _), values in zip(columns, scored, strict=True)}


def drift_detected(
    model: str,
    version: int,
    rows: int,
    scores: WindowScores,
    verdict: DriftVerdict,
    policy: DriftPolicy,
) -> DriftDetected:
    return DriftDetected(
        model=model,
        version=version,
        window_size=rows,
        scores={f: v["psi"].value for f, v in scores.items() if "psi" in v},
        drifted_features=verdict.drifted_features,
        findings=[
            DriftFindingData(
                feature=f.feature,
                statistic=f.statistic,
                value=f.value if math.isfinite(f.value) else None,
                threshold=f.threshold,
                p_value=f.p_value,
            )
            for f in verdict.findings
        ],
        threshold=policy.thresholds.get("psi"),
    )


def _check_batch(data: InferenceLogged) -> list[float | None]:
    """The batch's predictions, one per row; every input column must have the same length."""
    lengths = {name: len(values) for name, values in data.inputs.items()}
    if not lengths or len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise EventError(
            f"inference {data.inference_id}: expected inputs as equal-length, non-empty "
            f"lists per feature, got lengths {lengths}",
            problems=[f"data.inputs: column lengths {lengths}"],
        )
    count = next(iter(lengths.values()))
    # One output per row is a prediction to profile; anything else (say, class
    # probabilities) has no single value per row, so the inputs alone are kept.
    return list(data.outputs) if len(data.outputs) == count else [None] * count
