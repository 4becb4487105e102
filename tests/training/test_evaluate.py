"""Held-out scores, against small cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from falaj.errors import SchemaError
from training.errors import NotEnoughData
from training.evaluate import calibration_error, evaluate, roc_auc


def test_auc_counts_the_pairs_a_positive_wins() -> None:
    # Positives 0.35 and 0.8 against negatives 0.1 and 0.4: 0.35 beats 0.1 only,
    # 0.8 beats both, so 3 of the 4 pairs are ordered right.
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_auc_counts_a_tie_as_half() -> None:
    # Positive 0.9: tie with 0.9 (1/2), beats 0.2 and 0.3 (2); positive 0.3:
    # loses to 0.9, beats 0.2 (1), ties 0.3 (1/2). 4 of 6 pairs.
    assert roc_auc([1, 0, 1, 0, 0], [0.9, 0.9, 0.3, 0.2, 0.3]) == pytest.approx(4 / 6)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


def test_auc_is_one_for_a_perfect_ranking_and_zero_for_a_reversed_one() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    assert roc_auc(labels, scores) == 1.0
    assert roc_auc(labels, -scores) == 0.0


def test_auc_of_one_class_is_refused() -> None:
    with pytest.raises(NotEnoughData, match="both classes"):
        roc_auc([1, 1, 1], [0.2, 0.5, 0.9])


def test_calibration_error_is_the_weighted_gap_per_bin() -> None:
    # Each row alone in its bin: gaps 0.05, 0.15, 0.05, 0.15 -> mean 0.1.
    assert calibration_error([0, 0, 1, 1], [0.05, 0.15, 0.95, 0.85]) == pytest.approx(0.1)
    # Two rows sharing bin 2 with mean p 0.25 and positive rate 0.5: gap 0.25.
    assert calibration_error([0, 1], [0.22, 0.28]) == pytest.approx(0.25)


def test_evaluate_reports_every_score() -> None:
    result = evaluate([1, 0], [0.8, 0.3])
    assert result.accuracy == 1.0
    assert result.log_loss == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)
    assert result.brier == pytest.approx((0.2**2 + 0.3**2) / 2)
    assert result.auc == 1.0
    assert result.rows == 2
    assert result.positive_rate == 0.5
    metrics = result.metrics()
    assert set(metrics) == {"auc", "accuracy", "log_loss", "brier", "ece", "rows", "positive_rate"}
    assert all(isinstance(v, float) for v in metrics.values())


def test_log_loss_stays_finite_for_a_confident_mistake() -> None:
    result = evaluate([1, 0, 1], [0.0, 1.0, 1.0])
    assert math.isfinite(result.log_loss)
    assert result.log_loss > 5


def test_bad_input_names_every_problem() -> None:
    with pytest.raises(SchemaError) as caught:
        evaluate([0, 2, 1], [0.1, float("nan")])
    message = str(caught.value)
    assert "as many scores as labels" in message
    assert "only 0 and 1" in message
    assert "NaN" in message
