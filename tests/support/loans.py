"""A second dataset, nothing like the demo's: loan applications, deterministic for a seed.

An applicant applies one or more times over ``days`` days; whether the loan
defaulted follows a logistic function of the credit score and the loan's size
against the applicant's income, so a logistic regression can learn it. The
applicant's full name is the PII column. ``bad_rows`` break the contract in
the ways ``BAD_ROW_KINDS`` lists, one kind after another.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

START = datetime(2026, 1, 5, tzinfo=UTC)
EMPLOYMENT = ("salaried", "self_employed", "retired", "unemployed")
FIRST_NAMES = ("Aisha", "Omar", "Fatima", "Khalid", "Mariam", "Rashid", "Noura", "Saeed")
LAST_NAMES = ("Al Mansouri", "Al Nuaimi", "Al Shamsi", "Al Ketbi", "Al Hammadi")
#: The ways a broken row breaks the contract, in turn.
BAD_ROW_KINDS: tuple[str, ...] = ("credit-score-900", "unknown-employment", "missing-applicant")


def generate_applications(
    rows: int, *, seed: int, applicants: int = 300, days: int = 60, bad_rows: int = 0
) -> pd.DataFrame:
    """``rows`` applications as a CSV would hold them, ``bad_rows`` of them broken."""
    if rows < 1 or applicants < 1 or days < 1 or not 0 <= bad_rows <= rows:
        raise ValueError(
            "expected rows >= 1, applicants >= 1, days >= 1 and 0 <= bad_rows <= rows; got "
            f"rows={rows}, applicants={applicants}, days={days}, bad_rows={bad_rows}"
        )
    rng = np.random.default_rng(seed)
    who = rng.integers(0, applicants, size=rows)
    # Distinct seconds keep (applicant_id, applied_at) unique, as the contract requires.
    seconds = np.sort(rng.choice(days * 86_400, size=rows, replace=False))
    income = np.round(rng.lognormal(9.6, 0.45, size=rows), 2)  # monthly, AED
    loan = np.round(income * rng.uniform(2.0, 30.0, size=rows), 2)
    term = rng.choice([12, 24, 36, 48, 60, 84], size=rows)
    score = np.clip(rng.normal(660, 80, size=rows), 300, 850).astype(int)
    burden = loan / (income * term)  # share of monthly income the loan takes
    logit = -1.8 - 0.02 * (score - 660) + 6.0 * (burden - 0.35)
    defaulted = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame(
        {
            "applicant_id": [f"app-{i:05d}" for i in who],
            "applied_at": [pd.Timestamp(START) + pd.Timedelta(seconds=int(s)) for s in seconds],
            "full_name": [
                f"{FIRST_NAMES[i % len(FIRST_NAMES)]} {LAST_NAMES[i % len(LAST_NAMES)]} {i}"
                for i in who
            ],
            "income": income,
            "loan_amount": loan,
            "term_months": term,
            "credit_score": score,
            "employment": rng.choice(EMPLOYMENT, size=rows, p=[0.6, 0.2, 0.1, 0.1]),
            "defaulted": defaulted,
        }
    ).astype({"credit_score": object, "employment": object, "applicant_id": object})
    frame["applied_at"] = frame["applied_at"].map(lambda t: t.isoformat())
    for n, at in enumerate(rng.choice(rows, size=bad_rows, replace=False)):
        kind = BAD_ROW_KINDS[n % len(BAD_ROW_KINDS)]
        if kind == "credit-score-900":
            frame.loc[at, "credit_score"] = 900
        elif kind == "unknown-employment":
            frame.loc[at, "employment"] = "astronaut"
        else:
            frame.loc[at, "applicant_id"] = None
    return frame
