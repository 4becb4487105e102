"""The training set as arrays, split by time: the newest rows are held out.

A random split would let the model see the future of the rows it is scored on;
production only ever scores rows newer than its training data, so the held-out
set is the last ``held_out_fraction`` of rows by event time. Rows sharing the
cut-off timestamp all go to the held-out side, so no instant is on both sides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from falaj.errors import ConfigError, SchemaError
from training.errors import IncompleteFeatures, NotEnoughData

HELD_OUT_FRACTION = 0.2
#: Fewer rows than this in either part cannot train or score a model.
MIN_ROWS = 20
#: Rows lacking a feature value (null, NaN, infinite) are left out and counted, up
#: to this share of the set; past it the data is broken, not sparse, and the job
#: fails rather than learn from what is left.
MAX_INCOMPLETE_SHARE = 0.05


@dataclass(frozen=True)
class LabelledRows:
    """Feature matrix ``[N, F]`` (float32) and labels ``[N]`` (float32, 0 or 1)."""

    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.float32]

    @property
    def rows(self) -> int:
        return int(self.labels.shape[0])

    @property
    def positive_rate(self) -> float:
        return float(self.labels.mean()) if self.rows else math.nan


@dataclass(frozen=True)
class TrainingData:
    """The train and held-out parts, and how many rows were used and left out."""

    feature_names: tuple[str, ...]
    train: LabelledRows
    held_out: LabelledRows
    #: The first event time in the held-out part (ISO 8601).
    cutoff: str
    rows_used: int
    #: Rows the feature store could not join, plus rows with a missing value.
    rows_dropped: int

    def columns(self) -> dict[str, npt.NDArray[np.float32]]:
        """The training features by name (for the reference profile)."""
        return {name: self.train.features[:, i] for i, name in enumerate(self.feature_names)}


def split_by_time(
    frame: pd.DataFrame,
    *,
    feature_names: Sequence[str],
    label: str,
    timestamp: str,
    dropped: int = 0,
    held_out_fraction: float = HELD_OUT_FRACTION,
) -> TrainingData:
    """Turn a point-in-time training frame into train and held-out arrays."""
    if not 0.0 < held_out_fraction < 1.0:
        raise ConfigError(f"held_out_fraction: expected 0 < f < 1, got {held_out_fraction}")
    wanted = [*feature_names, label, timestamp]
    missing = [name for name in wanted if name not in frame.columns]
    if missing:
        raise SchemaError(
            f"the training frame lacks columns {missing}; it has {sorted(frame.columns)}. "
            "Is the feature repository applied with the current schema?"
        )
    table = frame[wanted].copy()
    table[timestamp] = pd.to_datetime(table[timestamp], utc=True)
    table[list(feature_names)] = _finite(table[list(feature_names)])
    complete = table.dropna()
    incomplete = len(table) - len(complete)
    _check_incomplete(table[list(feature_names)], incomplete)
    # A stable sort keeps the order deterministic among rows of one instant.
    ordered = complete.sort_values(timestamp, kind="mergesort").reset_index(drop=True)
    if len(ordered) < 2 * MIN_ROWS:
        raise NotEnoughData(
            f"expected at least {2 * MIN_ROWS} complete rows to train on, got {len(ordered)} "
            f"({incomplete} incomplete, {dropped} not joinable); ingest more data first"
        )
    cut = len(ordered) - math.ceil(len(ordered) * held_out_fraction)
    cutoff = ordered[timestamp].iloc[cut]
    is_held_out = (ordered[timestamp] >= cutoff).to_numpy()
    labels = ordered[label].astype(np.float32).to_numpy()
    bad_labels = sorted(set(np.unique(labels).tolist()) - {0.0, 1.0})
    if bad_labels:
        raise SchemaError(f"label {label!r}: expected 0 or 1, found {bad_labels[:5]}")
    features = ordered[list(feature_names)].to_numpy(dtype=np.float32)
    train = LabelledRows(features[~is_held_out], labels[~is_held_out])
    held_out = LabelledRows(features[is_held_out], labels[is_held_out])
    for part, rows in (("train", train), ("held-out", held_out)):
        if rows.rows < MIN_ROWS or len(np.unique(rows.labels)) < 2:
            raise NotEnoughData(
                f"the {part} part has {rows.rows} rows with labels "
                f"{sorted(np.unique(rows.labels).tolist())}; expected at least {MIN_ROWS} rows "
                "of both classes (too few rows, or all at one instant?)"
            )
    return TrainingData(
        feature_names=tuple(feature_names),
        train=train,
        held_out=held_out,
        cutoff=pd.Timestamp(cutoff).isoformat(),
        rows_used=len(ordered),
        rows_dropped=dropped + incomplete,
    )


def _finite(features: pd.DataFrame) -> pd.DataFrame:
    """Features as numbers, with infinities as missing: no model learns from them."""
    numeric = features.apply(pd.to_numeric, errors="coerce").astype("float64")
    return numeric.where(np.isfinite(numeric))


def _check_incomplete(features: pd.DataFrame, incomplete: int) -> None:
    """Refuse a set where more than MAX_INCOMPLETE_SHARE of rows lack a feature value."""
    if not len(features) or incomplete <= MAX_INCOMPLETE_SHARE * len(features):
        return
    by_feature = features.isna().sum()
    worst = ", ".join(f"{name} {count}" for name, count in by_feature[by_feature > 0].items())
    raise IncompleteFeatures(
        f"{incomplete} of {len(features)} rows ({incomplete / len(features):.0%}) lack a value "
        f"(null, NaN or infinite) of a feature ({worst}); expected at most "
        f"{MAX_INCOMPLETE_SHARE:.0%}: look at the data the features come from (ingest's "
        "quality reports give each column's null rate)"
    )
