"""Drift scoring: production inputs against the training-time reference profile.

Each ``inference.logged`` event adds its batch to the open window of its
(model, version). When the window holds ``drift_window`` rows, every profiled
feature and the predictions are scored with PSI against the profile stored with
that version at training time; the scores join the time series and the window
starts again. A feature above ``drift_psi_threshold`` raises ``drift.detected``
(which the training launcher turns into a new version), at most once per
``drift_cooldown_s`` per (model, version) so one shift does not queue a pile of
training jobs. Prediction drift is scored and reported, but only input drift
raises the alert: a retrained model is answered by the inputs it sees.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np

from falaj.errors import EventError, FalajError
from falaj.events import DriftDetected, EventType, InferenceLogged, ParsedEvent
from falaj.function import CloudEventFunction
from falaj.logs import get_logger
from falaj.profile import PREDICTION, ReferenceProfile, psi
from falaj.registry import ModelRegistry
from functions.drift.store import DriftStore, Window


class DriftFunction(CloudEventFunction):
    name = "drift"
    accepts = frozenset({EventType.INFERENCE_LOGGED})

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        # Injected so the cool-down can be tested without waiting for it.
        self._clock = clock
        self._store: DriftStore | None = None
        self._registry: ModelRegistry | None = None
        # The reference never changes for a version, so it is verified once.
        self._profiles: dict[tuple[str, int], ReferenceProfile] = {}
        self.log = get_logger(function=self.name)

    def on_start(self) -> None:
        self._store = DriftStore(self.ctx)
        self._registry = ModelRegistry(self.ctx)

    @property
    def store(self) -> DriftStore:
        if self._store is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._store

    def stop(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        super().stop()

    def handle(self, event: ParsedEvent) -> None:
        data = event.data
        if not isinstance(data, InferenceLogged):
            raise EventError(f"{self.name} scores {EventType.INFERENCE_LOGGED} events only")
        rows, predictions = _batch_rows(data)
        # Loaded before anything is stored: an unknown or tampered version is
        # refused without growing a window nobody can ever score.
        profile = self._profile(data.model, data.version)
        self.store.append(data.model, data.version, event.id, rows, predictions)
        if self.store.window_size(data.model, data.version) >= self.ctx.settings.drift_window:
            self._close_window(data.model, data.version, profile)

    def _profile(self, model: str, version: int) -> ReferenceProfile:
        key = (model, version)
        if key not in self._profiles:
            if self._registry is None:
                raise FalajError(f"function {self.name} used before start()")
            self._profiles[key] = self._registry.load_verified(model, version).profile
        return self._profiles[key]

    def _close_window(self, model: str, version: int, profile: ReferenceProfile) -> None:
        settings = self.ctx.settings
        window = self.store.window(model, version)
        scores = _score(profile, window)
        threshold = settings.drift_psi_threshold
        drifted = sorted(n for n, s in scores.items() if n != PREDICTION and s > threshold)
        now = self._clock()
        last = self.store.last_alert(model, version)
        cooling = last is not None and now - last < settings.drift_cooldown_s
        alert = bool(drifted) and not cooling
        if alert:
            # Emitted before the window is closed: if the broker is down the
            # event is redelivered and the same window (deduplicated) is scored again.
            self.emit(
                EventType.DRIFT_DETECTED,
                DriftDetected(
                    model=model,
                    version=version,
                    window_size=window.rows,
                    statistic="psi",
                    threshold=threshold,
                    scores=scores,
                    drifted_features=drifted,
                ),
                subject=f"{model}/{version}",
            )
        self.store.close_window(
            model,
            version,
            window_end=datetime.fromtimestamp(now, UTC).isoformat(),
            scores=scores,
            window_rows=window.rows,
            alerted_at=now if alert else None,
        )
        self.log.info(
            "drift.window_scored",
            model=model,
            version=version,
            rows=window.rows,
            drifted=drifted,
            alerted=alert,
            cooling=bool(drifted) and cooling,
        )
        if alert:
            self.ctx.audit.record(
                "drift.detected",
                actor=self.ctx.actor,
                resource=f"model/{model}/{version}",
                region=settings.region,
                details={
                    "statistic": "psi",
                    "threshold": threshold,
                    "drifted_features": drifted,
                    "window_rows": window.rows,
                },
            )


def _batch_rows(data: InferenceLogged) -> tuple[list[dict[str, float]], list[float | None]]:
    """Split a logged batch into rows; every input column must have the same length."""
    lengths = {name: len(values) for name, values in data.inputs.items()}
    if not lengths or len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise EventError(
            f"inference {data.inference_id}: expected inputs as equal-length, non-empty "
            f"lists per feature, got lengths {lengths}",
            problems=[f"data.inputs: column lengths {lengths}"],
        )
    count = next(iter(lengths.values()))
    rows = [{name: values[i] for name, values in data.inputs.items()} for i in range(count)]
    # One output per row is a prediction to profile; anything else (say, class
    # probabilities) has no single value per row, so the inputs alone are kept.
    predictions: list[float | None] = (
        list(data.outputs) if len(data.outputs) == count else [None] * count
    )
    return rows, predictions


def _score(profile: ReferenceProfile, window: Window) -> dict[str, float]:
    scores: dict[str, float] = {}
    for name, reference in profile.features.items():
        column = window.columns.get(name)
        # A feature the window never carried (or only as NaN) has no distribution.
        if column is not None and np.isfinite(column).any():
            scores[name] = psi(reference, column)
    if profile.prediction is not None and np.isfinite(window.predictions).any():
        scores[PREDICTION] = psi(profile.prediction, window.predictions)
    return scores
