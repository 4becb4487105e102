"""Per-variant serving metrics in the router, and the A/B report built from them.

For each (model, version, variant) the router counts requests, server errors
(5xx from the predictor, or no answer) and caller errors (4xx), and keeps the
latency of the most recent requests (a bounded window, so memory stays flat
under any traffic). The report compares the canary (``b``) with the stable
version (``a``) of the split that serves now: error rate by the two-proportion
z-test, latency by Welch's t-test (``falaj.ab_stats``).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from falaj.ab_stats import compare_means, compare_rates
from falaj.deployments import TrafficSplit

#: Latencies kept per variant: enough for a test's power, bounded for memory.
LATENCY_WINDOW = 10_000


@dataclass
class VariantMetrics:
    requests: int = 0
    server_errors: int = 0
    caller_errors: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def to_json(self) -> dict[str, Any]:
        latencies = np.asarray(self.latencies_ms)
        return {
            "requests": self.requests,
            "server_errors": self.server_errors,
            "caller_errors": self.caller_errors,
            "error_rate": self.server_errors / self.requests if self.requests else None,
            "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies.size else None,
            "latency_p99_ms": float(np.percentile(latencies, 99)) if latencies.size else None,
        }


class ServingMetrics:
    """The router's counters; one lock, as requests finish on the event loop and tests read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._variants: dict[tuple[str, int, str], VariantMetrics] = {}

    def observe(
        self, model: str, version: int, variant: str, status: int, latency_ms: float
    ) -> None:
        with self._lock:
            metrics = self._variants.setdefault((model, version, variant), VariantMetrics())
            metrics.requests += 1
            if status >= 500:
                metrics.server_errors += 1
            elif status >= 400:
                metrics.caller_errors += 1
            metrics.latencies_ms.append(latency_ms)

    def report(self, split: TrafficSplit) -> dict[str, Any]:
        """Every variant of ``split`` and, with a canary, its comparison with the stable one."""
        with self._lock:
            stable = self._copy(split.model, split.stable_version, "stable")
            canary = (
                None
                if split.canary_version is None
                else self._copy(split.model, split.canary_version, "canary")
            )
        variants = {f"v{split.stable_version} (stable)": stable.to_json()}
        if canary is None:
            return {"variants": variants, "comparison": None}
        variants[f"v{split.canary_version} (canary)"] = canary.to_json()
        return {
            "variants": variants,
            "comparison": {
                "error_rate": compare_rates(
                    stable.server_errors, stable.requests, canary.server_errors, canary.requests
                ).to_json(),
                "latency_ms": compare_means(
                    list(stable.latencies_ms), list(canary.latencies_ms)
                ).to_json(),
            },
        }

    def _copy(self, model: str, version: int, variant: str) -> VariantMetrics:
        found = self._variants.get((model, version, variant), VariantMetrics())
        return VariantMetrics(
            found.requests, found.server_errors, found.caller_errors, deque(found.latencies_ms)
        )
