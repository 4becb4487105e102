"""The candidate against the version in production, on the same held-out rows.

A production version's registered metrics were measured on *its* held-out
rows, older than the candidate's; comparing those numbers would reward
whichever happened to get the easier slice. So the production model is loaded
(verified) and scored on the candidate's held-out rows, and the two are
compared there. The verdict is evidence for the rollout, not its decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from falaj.registry import VerifiedArtifact
from training.data import LabelledRows
from training.evaluate import Evaluation, evaluate
from training.export import onnx_predict

#: An AUC difference smaller than this (half a point) is noise, not a verdict.
AUC_MARGIN = 0.005


class Verdict(StrEnum):
    BETTER = "better"
    ON_PAR = "on-par"
    WORSE = "worse"


@dataclass(frozen=True)
class Comparison:
    production_version: int
    candidate: Evaluation
    production: Evaluation
    verdict: Verdict

    @property
    def auc_delta(self) -> float:
        return self.candidate.auc - self.production.auc

    def to_lineage(self) -> dict[str, Any]:
        return {
            "production_version": self.production_version,
            "verdict": str(self.verdict),
            "auc_delta": self.auc_delta,
            "log_loss_delta": self.candidate.log_loss - self.production.log_loss,
            "ece_delta": self.candidate.ece - self.production.ece,
            "production_on_same_rows": self.production.metrics(),
            "rows": self.candidate.rows,
            "auc_margin": AUC_MARGIN,
        }


def compare_with_production(
    candidate: Evaluation, production: VerifiedArtifact, held_out: LabelledRows
) -> Comparison:
    """Score the verified production model on ``held_out`` and judge the candidate by AUC."""
    scored = evaluate(held_out.labels, onnx_predict(production.onnx_bytes, held_out.features))
    delta = candidate.auc - scored.auc
    verdict = (
        Verdict.BETTER
        if delta > AUC_MARGIN
        else Verdict.WORSE
        if delta < -AUC_MARGIN
        else Verdict.ON_PAR
    )
    return Comparison(
        production_version=production.version.version,
        candidate=candidate,
        production=scored,
        verdict=verdict,
    )
