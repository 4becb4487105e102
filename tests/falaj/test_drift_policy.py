"""The drift policy: which statistics count, the minimum rows, the cool-down."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from falaj.drift_policy import DriftPolicy
from falaj.drift_statistics import StatisticValue
from falaj.errors import ConfigError
from falaj.profile import PREDICTION
from falaj.settings import Settings

SCORES = {
    "amount": {
        "psi": StatisticValue("psi", 0.35),
        "ks": StatisticValue("ks", 0.3, p_value=1e-9),
        "wasserstein": StatisticValue("wasserstein", 0.1),
    },
    "country": {
        "chi_square": StatisticValue("chi_square", 3.0, p_value=0.4),
        "jensen_shannon": StatisticValue("jensen_shannon", 0.05),
    },
    PREDICTION: {"psi": StatisticValue("psi", 3.0)},
}


def policy(**thresholds: float) -> DriftPolicy:
    return DriftPolicy(
        thresholds=thresholds or {"psi": 0.2, "ks": 0.001, "wasserstein": 0.25},
        min_samples=100,
        cooldown_s=60.0,
    )


def test_findings_name_each_statistic_past_its_threshold_and_never_the_prediction() -> None:
    findings = policy().findings(SCORES)
    assert [(f.feature, f.statistic) for f in findings] == [("amount", "psi"), ("amount", "ks")]
    assert findings[1].p_value == 1e-9 and findings[1].threshold == 0.001


def test_a_statistic_without_a_threshold_decides_nothing() -> None:
    assert policy(wasserstein=0.05).findings(SCORES)[0].statistic == "wasserstein"
    assert policy(jensen_shannon=0.5).findings(SCORES) == ()


def test_verdict_holds_back_for_few_rows_and_during_the_cool_down() -> None:
    rule = policy()
    assert rule.verdict(SCORES, rows=400, now=1000.0, last_alert=None).alert
    few = rule.verdict(SCORES, rows=50, now=1000.0, last_alert=None)
    assert not few.alert and few.held_back == "50 rows < minimum 100"
    cooling = rule.verdict(SCORES, rows=400, now=1000.0, last_alert=970.0)
    assert not cooling.alert and cooling.held_back == "cooling down, 30 s left"
    assert cooling.drifted_features == ["amount"]
    assert rule.verdict(SCORES, rows=400, now=1000.0, last_alert=939.0).alert


def test_settings_take_thresholds_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"FALAJ_DRIFT_THRESHOLDS": "psi=0.3, ks=0.01"}, home=tmp_path / ".falaj"
    )
    assert settings.drift_thresholds == {"psi": 0.3, "ks": 0.01}
    assert DriftPolicy.from_settings(settings).thresholds == {"psi": 0.3, "ks": 0.01}
    with pytest.raises(ConfigError, match="unknown drift statistics \\['kl'\\]"):
        Settings.from_env({"FALAJ_DRIFT_THRESHOLDS": "kl=0.1"}, home=tmp_path)
    with pytest.raises(ConfigError, match="expected STATISTIC=VALUE"):
        Settings.from_env({"FALAJ_DRIFT_THRESHOLDS": "psi"}, home=tmp_path)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "expected at least one STATISTIC=VALUE"),
        ("psi=nan", "psi: expected a finite number above 0, got nan"),
        ("psi=-1", "psi: expected a finite number above 0, got -1"),
        ("ks=2", "ks: expected a p-value between 0 and 1, got 2"),
        ("psi=0.2,psi=0.3", "each key once"),
    ],
)
def test_thresholds_that_could_never_or_always_fire_are_refused(
    tmp_path: Path, raw: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env({"FALAJ_DRIFT_THRESHOLDS": raw}, home=tmp_path)


def test_a_window_smaller_than_the_minimum_sample_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="drift_min_samples \\(100\\) exceeds drift_window \\(50\\)"
    ):
        Settings.from_env({"FALAJ_DRIFT_WINDOW": "50"}, home=tmp_path)
    assert (
        Settings.from_env(
            {"FALAJ_DRIFT_WINDOW": "50", "FALAJ_DRIFT_MIN_SAMPLES": "50"}, home=tmp_path
        ).drift_window
        == 50
    )


def test_the_replaced_psi_threshold_says_what_replaces_it(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="FALAJ_DRIFT_PSI_THRESHOLD was replaced: set FALAJ_DRIFT_THRESHOLDS=psi="
    ):
        Settings.from_env({"FALAJ_DRIFT_PSI_THRESHOLD": "0.3"}, home=tmp_path)
