"""Synthetic card transactions for the demo, deterministic for a seed.

Fraud (about 5% of rows) differs from legitimate traffic the way it does in
practice: larger amounts, far from home, abroad, at night, on young cards, in
bursts. ``shift`` moves the legitimate traffic (amounts, distances, activity)
as a new season or market would, so drift detection has something to find:
PSI is near 0 at ``shift=0`` and well above 0.2 at ``shift=1`` for those three.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

MODEL_INPUTS: tuple[str, ...] = (
    "amount",
    "hour",
    "distance_km",
    "card_age_days",
    "tx_count_24h",
    "is_foreign",
)
CATEGORIES: tuple[str, ...] = (
    "grocery",
    "fuel",
    "travel",
    "electronics",
    "dining",
    "online",
    "other",
)
DEFAULT_START = datetime(2025, 1, 1, tzinfo=UTC)
FRAUD_RATE = 0.05
#: Share of fraud that looks like its card holder, and of honest customers who travel.
CAMOUFLAGED_FRAUD = 0.3
TRAVELLING_LEGIT = 0.02
#: The ways a broken row breaks the schema, injected in turn.
BAD_ROW_KINDS: tuple[str, ...] = (
    "negative-amount",
    "unknown-category",
    "missing-card-id",
    "hour-25",
    "non-numeric-amount",
)

_LEGIT_CATEGORY_P = np.array([0.30, 0.15, 0.05, 0.05, 0.20, 0.15, 0.10])
_FRAUD_CATEGORY_P = np.array([0.05, 0.05, 0.20, 0.35, 0.05, 0.25, 0.05])
# Legitimate spending follows the day: little at night, most in the afternoon.
_LEGIT_HOUR_P = np.array(
    [1, 0.6, 0.4, 0.3, 0.3, 0.5, 1, 2, 3, 4, 5, 6, 7, 6, 6, 6, 6, 7, 8, 8, 6, 4, 3, 2], dtype=float
)
_FRAUD_HOUR_P = np.array(
    [6, 7, 8, 8, 7, 5, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 4, 5], dtype=float
)


def generate_transactions(
    rows: int,
    *,
    seed: int,
    shift: float = 0.0,
    start: datetime | None = None,
    days: int = 30,
    cards: int = 500,
    bad_rows: int = 0,
) -> pd.DataFrame:
    """``rows`` transactions over ``days`` days from ``start``, ``bad_rows`` of them broken."""
    if rows < 0 or days < 1 or cards < 1 or not 0 <= bad_rows <= rows:
        raise ValueError(
            f"expected rows >= 0, days >= 1, cards >= 1 and 0 <= bad_rows <= rows; got "
            f"rows={rows}, days={days}, cards={cards}, bad_rows={bad_rows}"
        )
    rng = np.random.default_rng(seed)
    first = start or DEFAULT_START
    seconds = days * 86_400
    # Distinct instants keep (card_id, event_timestamp) unique, as the schema requires.
    offsets = np.sort(rng.choice(seconds, size=rows, replace=rows > seconds))
    card = rng.integers(0, cards, size=rows)
    # Each card's age on the first day; the same seed gives the same cards.
    issued = np.random.default_rng(cards).gamma(2.0, 300.0, size=cards).astype(np.int64)
    fraud = rng.random(rows) < FRAUD_RATE
    # Real fraud is not separable: some of it mimics the card holder, and some
    # honest customers travel and spend like fraudsters. Features follow how a
    # transaction *looks*; the label is what it *is*.
    camouflaged = fraud & (rng.random(rows) < CAMOUFLAGED_FRAUD)
    traveller = ~fraud & (rng.random(rows) < TRAVELLING_LEGIT)
    looks = (fraud & ~camouflaged) | traveller
    n_looks = int(looks.sum())
    n_plain = rows - n_looks

    amount = np.empty(rows)
    amount[~looks] = rng.lognormal(np.log(40.0) + 0.8 * shift, 0.9, n_plain)
    amount[looks] = rng.lognormal(np.log(400.0), 1.0, n_looks)
    distance = np.empty(rows)
    distance[~looks] = rng.exponential(5.0 * (1.0 + 2.0 * shift), n_plain)
    distance[looks] = rng.lognormal(np.log(800.0), 1.2, n_looks)
    tx_count = np.empty(rows, dtype=np.int64)
    tx_count[~looks] = rng.poisson(2.0 + 3.0 * shift, n_plain)
    tx_count[looks] = rng.poisson(9.0, n_looks)
    hour = np.empty(rows, dtype=np.int64)
    hour[~looks] = rng.choice(24, size=n_plain, p=_LEGIT_HOUR_P / _LEGIT_HOUR_P.sum())
    hour[looks] = rng.choice(24, size=n_looks, p=_FRAUD_HOUR_P / _FRAUD_HOUR_P.sum())
    age = issued[card] + offsets // 86_400
    stolen = fraud & ~camouflaged
    age[stolen] = rng.integers(0, 90, int(stolen.sum()))  # stolen details on new cards
    foreign = np.where(looks, rng.random(rows) < 0.6, rng.random(rows) < 0.05).astype(np.int64)
    category = np.where(
        looks,
        rng.choice(CATEGORIES, size=rows, p=_FRAUD_CATEGORY_P),
        rng.choice(CATEGORIES, size=rows, p=_LEGIT_CATEGORY_P),
    )
    frame = pd.DataFrame(
        {
            "card_id": [f"card-{c:05d}" for c in card],
            "event_timestamp": pd.to_datetime(first) + pd.to_timedelta(offsets, unit="s"),
            "amount": np.clip(np.round(amount, 2), 0.5, 50_000.0),
            "hour": hour,
            "distance_km": np.clip(np.round(distance, 1), 0.0, 20_000.0),
            "card_age_days": age,
            "tx_count_24h": tx_count,
            "is_foreign": foreign,
            "merchant_category": category,
            "is_fraud": fraud.astype(np.int64),
        }
    )
    return _break_rows(frame, bad_rows, rng) if bad_rows else frame


def _break_rows(frame: pd.DataFrame, count: int, rng: np.random.Generator) -> pd.DataFrame:
    broken = frame.copy()
    # Object columns, so a broken row can hold what a real broken file holds.
    broken["amount"] = broken["amount"].astype(object)
    broken["hour"] = broken["hour"].astype(object)
    positions = np.sort(rng.choice(len(frame), size=count, replace=False))
    for i, position in enumerate(positions):
        kind = BAD_ROW_KINDS[i % len(BAD_ROW_KINDS)]
        row = broken.index[position]
        if kind == "negative-amount":
            broken.at[row, "amount"] = -abs(float(frame.at[row, "amount"]))
        elif kind == "unknown-category":
            broken.at[row, "merchant_category"] = "casino"
        elif kind == "missing-card-id":
            broken.at[row, "card_id"] = None
        elif kind == "hour-25":
            broken.at[row, "hour"] = 25
        else:
            broken.at[row, "amount"] = "twelve"
    return broken


def inference_rows(n: int, *, seed: int, shift: float = 0.0) -> list[dict[str, float]]:
    """``n`` requests' model inputs, drawn like the transactions of the same shift."""
    return [inputs for inputs, _ in labelled_inference_rows(n, seed=seed, shift=shift)]


def labelled_inference_rows(
    n: int, *, seed: int, shift: float = 0.0
) -> list[tuple[dict[str, float], int]]:
    """``n`` requests' model inputs and what each transaction turned out to be (1: fraud)."""
    frame = generate_transactions(n, seed=seed, shift=shift)
    inputs = frame[list(MODEL_INPUTS)].astype("float64")
    labels = frame["is_fraud"].astype(int).tolist()
    return [
        ({name: float(value) for name, value in zip(MODEL_INPUTS, row, strict=True)}, label)
        for row, label in zip(inputs.itertuples(index=False), labels, strict=True)
    ]
