"""When a scored window is drift worth acting on: thresholds, minimum samples, cool-down.

Scoring (``drift_statistics``) says how far each feature moved; the policy says
which of those moves count (``findings``: a statistic past its threshold) and
whether the window raises ``drift.detected`` (``verdict``): only with findings,
only over at least ``min_samples`` rows, and not again within ``cooldown_s`` of
the version's last alert, so one shift does not queue a pile of training jobs.

Prediction drift is scored and shown but never decides: a retrained model is
answered by the inputs it sees, and a better model moves its predictions too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from falaj.drift_statistics import StatisticValue, statistic
from falaj.profile import PREDICTION
from falaj.settings import Settings

#: feature -> statistic -> its value over one window.
WindowScores = Mapping[str, Mapping[str, StatisticValue]]


@dataclass(frozen=True)
class DriftFinding:
    """One statistic of one feature past its threshold."""

    feature: str
    statistic: str
    value: float
    threshold: float
    p_value: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "statistic": self.statistic,
            "value": self.value,
            "threshold": self.threshold,
            "p_value": self.p_value,
        }


@dataclass(frozen=True)
class DriftVerdict:
    findings: tuple[DriftFinding, ...]
    alert: bool
    #: Why there is no alert despite findings ("cooling down", "too few rows"), or "".
    held_back: str = ""

    @property
    def drifted_features(self) -> list[str]:
        return sorted({f.feature for f in self.findings})


@dataclass(frozen=True, kw_only=True)
class DriftPolicy:
    thresholds: Mapping[str, float]
    min_samples: int
    cooldown_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> DriftPolicy:
        return cls(
            thresholds=dict(settings.drift_thresholds),
            min_samples=settings.drift_min_samples,
            cooldown_s=settings.drift_cooldown_s,
        )

    def findings(self, scores: WindowScores) -> tuple[DriftFinding, ...]:
        """Every (feature, statistic) past its threshold, prediction drift left out."""
        found = []
        for feature, values in sorted(scores.items()):
            if feature == PREDICTION:
                continue
            for name, value in values.items():
                threshold = self.thresholds.get(name)
                if threshold is not None and statistic(name).drifted(value, threshold):
                    found.append(
                        DriftFinding(
                            feature=feature,
                            statistic=name,
                            value=value.value,
                            threshold=threshold,
                            p_value=value.p_value,
                        )
                    )
        return tuple(found)

    def verdict(
        self, scores: WindowScores, *, rows: int, now: float, last_alert: float | None
    ) -> DriftVerdict:
        findings = self.findings(scores)
        if not findings:
            return DriftVerdict(findings, alert=False)
        if rows < self.min_samples:
            return DriftVerdict(
                findings, alert=False, held_back=f"{rows} rows < minimum {self.min_samples}"
            )
        if last_alert is not None and now - last_alert < self.cooldown_s:
            left = self.cooldown_s - (now - last_alert)
            return DriftVerdict(findings, alert=False, held_back=f"cooling down, {left:.0f} s left")
        return DriftVerdict(findings, alert=True)
