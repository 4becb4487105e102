"""Per-variant serving metrics in the router, and the A/B report built from them.

For each (model, version, variant) the router counts requests, server errors
(5xx from the predictor, or no answer) and caller errors (4xx), and keeps the
latency of the most recent requests. From the payload log (off the request
path) it keeps the most recent predictions, and it remembers which variant
answered each recent inference id, so an outcome reported later (the
transaction really was fraud) is credited to the variant that predicted it.
Every window is bounded, so memory stays flat under any traffic.

The report compares the canary (``b``) with the stable version (``a``) of the
split that serves now: error rate and accuracy by the two-proportion z-test,
latency and the mean prediction by Welch's t-test (``falaj.ab_stats``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from falaj.ab_stats import compare_means, compare_rates
from falaj.deployments import TrafficSplit
from falaj.events import InferenceLogged, InferenceOutcome
from falaj.rollouts import VariantEvidence

#: Latencies and predictions kept per variant: enough for a test's power, bounded for memory.
WINDOW = 10_000
#: Inference ids remembered for outcome feedback (oldest forgotten first).
REMEMBERED_INFERENCES = 100_000
#: A probability at or above this is the positive class (for accuracy and positive rate).
THRESHOLD = 0.5
HISTOGRAM_BINS = 10


def _window() -> deque[float]:
    return deque(maxlen=WINDOW)


@dataclass
class VariantMetrics:
    requests: int = 0
    server_errors: int = 0
    caller_errors: int = 0
    latencies_ms: deque[float] = field(default_factory=_window)
    predictions: deque[float] = field(default_factory=_window)
    outcomes: int = 0
    correct: int = 0

    def copy(self) -> VariantMetrics:
        return VariantMetrics(
            self.requests,
            self.server_errors,
            self.caller_errors,
            deque(self.latencies_ms, maxlen=WINDOW),
            deque(self.predictions, maxlen=WINDOW),
            self.outcomes,
            self.correct,
        )

    def p99_ms(self) -> float | None:
        return float(np.percentile(self.latencies_ms, 99)) if self.latencies_ms else None

    def to_json(self) -> dict[str, Any]:
        latencies = np.asarray(self.latencies_ms)
        predictions = np.asarray(self.predictions)
        histogram, _ = np.histogram(predictions, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
        return {
            "requests": self.requests,
            "server_errors": self.server_errors,
            "caller_errors": self.caller_errors,
            "error_rate": self.server_errors / self.requests if self.requests else None,
            "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies.size else None,
            "latency_p99_ms": self.p99_ms(),
            "predictions": {
                "count": int(predictions.size),
                "mean": float(predictions.mean()) if predictions.size else None,
                "positive_rate": (
                    float((predictions >= THRESHOLD).mean()) if predictions.size else None
                ),
                # Ten equal bins over [0, 1]: the shape of what the variant answers.
                "histogram": [int(c) for c in histogram],
            },
            "outcomes": {
                "count": self.outcomes,
                "accuracy": self.correct / self.outcomes if self.outcomes else None,
            },
        }


@dataclass(frozen=True)
class _Answered:
    """Which variant answered one inference id, with the rows it predicted."""

    model: str
    version: int
    variant: str
    outputs: tuple[float, ...]


class ServingMetrics:
    """The router's counters; one lock, as the event loop, the payload thread and tests meet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._variants: dict[tuple[str, int, str], VariantMetrics] = {}
        # inference id -> every variant that answered it (the caller's and a shadow's).
        self._answered: OrderedDict[str, list[_Answered]] = OrderedDict()
        # model -> the (stable, canary) pair being judged and the counters when it began.
        self._epochs: dict[str, tuple[tuple[int, int], list[tuple[int, int, int, int]]]] = {}

    def _metrics(self, model: str, version: int, variant: str) -> VariantMetrics:
        return self._variants.setdefault((model, version, variant), VariantMetrics())

    def observe(
        self, model: str, version: int, variant: str, status: int, latency_ms: float
    ) -> None:
        with self._lock:
            metrics = self._metrics(model, version, variant)
            metrics.requests += 1
            if status >= 500:
                metrics.server_errors += 1
            elif status >= 400:
                metrics.caller_errors += 1
            metrics.latencies_ms.append(latency_ms)

    def observe_predictions(self, logged: InferenceLogged) -> None:
        """One logged prediction: its outputs, and who answered its inference id."""
        answered = _Answered(logged.model, logged.version, logged.variant, tuple(logged.outputs))
        with self._lock:
            self._metrics(logged.model, logged.version, logged.variant).predictions.extend(
                logged.outputs
            )
            self._answered.setdefault(logged.inference_id, []).append(answered)
            self._answered.move_to_end(logged.inference_id)
            while len(self._answered) > REMEMBERED_INFERENCES:
                self._answered.popitem(last=False)

    def observe_outcome(self, outcome: InferenceOutcome) -> bool:
        """Credit ``outcome`` to every variant that answered its id; False if none is known."""
        with self._lock:
            answers = [
                a
                for a in self._answered.get(outcome.inference_id, [])
                if a.model == outcome.model and outcome.row < len(a.outputs)
            ]
            for answer in answers:
                metrics = self._metrics(answer.model, answer.version, answer.variant)
                metrics.outcomes += 1
                predicted = answer.outputs[outcome.row] >= THRESHOLD
                metrics.correct += int(predicted == (outcome.label >= THRESHOLD))
        return bool(answers)

    def evidence(self, split: TrafficSplit) -> tuple[VariantEvidence, VariantEvidence] | None:
        """The stable's and the canary's evidence since this canary was first judged.

        Counts before that are not evidence about the canary: the stable's
        accuracy on last week's traffic (before the drift that made the canary)
        would make any canary look worse, and a version made canary again would
        start with what it earned the first time. The latency windows are the
        most recent requests either way.
        """
        if split.canary_version is None:
            return None
        pair = ((split.stable_version, "stable"), (split.canary_version, "canary"))
        with self._lock:
            found = [
                self._variants.get((split.model, version, variant), VariantMetrics())
                for version, variant in pair
            ]
            counts = [(m.requests, m.server_errors, m.outcomes, m.correct) for m in found]
            epoch = (split.stable_version, split.canary_version)
            started = self._epochs.get(split.model)
            if started is None or started[0] != epoch:
                started = self._epochs[split.model] = (epoch, counts)
            latencies = [np.asarray(m.latencies_ms) for m in found]
        # Percentiles after the lock (the request path takes it too).
        stable, canary = (
            VariantEvidence(
                now[0] - then[0],
                now[1] - then[1],
                float(np.percentile(ms, 99)) if ms.size else None,
                now[2] - then[2],
                now[3] - then[3],
            )
            for now, then, ms in zip(counts, started[1], latencies, strict=True)
        )
        return stable, canary

    def _pair(self, split: TrafficSplit) -> tuple[VariantMetrics, VariantMetrics | None]:
        with self._lock:
            stable = self._copy(split.model, split.stable_version, "stable")
            canary = (
                None
                if split.canary_version is None
                else self._copy(split.model, split.canary_version, "canary")
            )
        return stable, canary

    def report(self, split: TrafficSplit) -> dict[str, Any]:
        """Every variant of ``split`` and, with a canary, its comparison with the stable one."""
        stable, canary = self._pair(split)
        variants = {f"v{split.stable_version} (stable)": stable.to_json()}
        if split.shadow_version is not None:
            with self._lock:
                shadow = self._copy(split.model, split.shadow_version, "shadow")
            variants[f"v{split.shadow_version} (shadow)"] = shadow.to_json()
        if canary is None:
            return {"variants": variants, "comparison": None}
        variants[f"v{split.canary_version} (canary)"] = canary.to_json()
        return {
            "variants": variants,
            "comparison": {
                "error_rate": compare_rates(
                    stable.server_errors, stable.requests, canary.server_errors, canary.requests
                ).to_json(),
                "latency_ms": compare_means(stable.latencies_ms, canary.latencies_ms).to_json(),
                "prediction_mean": compare_means(stable.predictions, canary.predictions).to_json(),
                "accuracy": compare_rates(
                    stable.correct, stable.outcomes, canary.correct, canary.outcomes
                ).to_json(),
            },
        }

    def _copy(self, model: str, version: int, variant: str) -> VariantMetrics:
        return self._variants.get((model, version, variant), VariantMetrics()).copy()
