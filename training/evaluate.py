"""Scores of a binary classifier on held-out rows, in numpy alone.

- ``auc``: the probability that a random positive scores above a random
  negative (ties count half), from the Mann-Whitney rank sum;
- ``accuracy``: at ``threshold``;
- ``log_loss``: mean cross-entropy, probabilities clipped to ``[eps, 1 - eps]``;
- ``brier``: mean squared error of the probabilities;
- ``ece``: expected calibration error over equal-width probability bins, the
  row-weighted gap between mean probability and observed positive rate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from falaj.errors import SchemaError
from training.errors import NotEnoughData

EPSILON = 1e-7


@dataclass(frozen=True)
class Evaluation:
    auc: float
    accuracy: float
    log_loss: float
    brier: float
    ece: float
    rows: int
    positive_rate: float

    def metrics(self) -> dict[str, float]:
        """The scores as registry metrics (every value a float)."""
        return {name: float(value) for name, value in asdict(self).items()}


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve; ties between a positive and a negative count half."""
    y, s = _checked(labels, scores)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        raise NotEnoughData(
            f"AUC needs both classes, got {positives} positives and {negatives} negatives"
        )
    # Average ranks of tied scores: rank of a value = rows below it + (its count + 1) / 2.
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    below = np.concatenate(([0], np.cumsum(counts)[:-1]))
    ranks = (below + (counts + 1) / 2.0)[inverse]
    rank_sum = float(ranks[y == 1].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def calibration_error(labels: npt.ArrayLike, probabilities: npt.ArrayLike, bins: int = 10) -> float:
    """Expected calibration error over ``bins`` equal-width bins of ``[0, 1]``."""
    y, p = _checked(labels, probabilities)
    # Bin i holds i/bins <= p < (i+1)/bins; p == 1 goes to the last bin.
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    mean_p = np.bincount(index, weights=p, minlength=bins)
    mean_y = np.bincount(index, weights=y, minlength=bins)
    filled = counts > 0
    gaps = np.abs(mean_p[filled] - mean_y[filled]) / counts[filled]
    return float(np.sum(gaps * counts[filled]) / y.size)


def evaluate(
    labels: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    *,
    threshold: float = 0.5,
    bins: int = 10,
) -> Evaluation:
    y, p = _checked(labels, probabilities)
    clipped = np.clip(p, EPSILON, 1.0 - EPSILON)
    log_loss = -np.mean(y * np.log(clipped) + (1.0 - y) * np.log(1.0 - clipped))
    return Evaluation(
        auc=roc_auc(y, p),
        accuracy=float(np.mean((p >= threshold) == (y == 1))),
        log_loss=float(log_loss),
        brier=float(np.mean((p - y) ** 2)),
        ece=calibration_error(y, p, bins),
        rows=int(y.size),
        positive_rate=float(y.mean()),
    )


def _checked(
    labels: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    problems = []
    if y.shape != s.shape:
        problems.append(f"expected as many scores as labels, got {s.size} and {y.size}")
    if y.size == 0:
        problems.append("expected at least one row, got none")
    if not np.isin(y, (0.0, 1.0)).all():
        problems.append("labels: expected only 0 and 1")
    if not np.isfinite(s).all():
        problems.append("scores: expected finite numbers, found NaN or infinity")
    if problems:
        raise SchemaError("cannot evaluate: " + "; ".join(problems))
    return y, s
