"""The candidate is judged against production on the same held-out rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from falaj.context import Context
from falaj.profile import ReferenceProfile
from falaj.registry import ModelRegistry
from training.compare import AUC_MARGIN, Verdict, compare_with_production
from training.data import LabelledRows
from training.evaluate import evaluate
from training.export import onnx_predict, to_onnx
from training.model import NetworkSpec, ProbabilityModel, TabularMLP

FEATURES = ("a", "b")


def logistic(weights: tuple[float, float]) -> ProbabilityModel:
    """A logistic regression with the given weights: a model of known skill."""
    net = TabularMLP(NetworkSpec(features=2, hidden=()))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.zero_()
        linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
        linear.weight.copy_(torch.tensor([weights]))
    return ProbabilityModel(net).eval()


@pytest.fixture
def held_out() -> LabelledRows:
    rng = np.random.default_rng(3)
    features = rng.normal(size=(2000, 2)).astype(np.float32)
    # Only feature a carries the label.
    labels = (features[:, 0] + 0.5 * rng.normal(size=2000) > 0).astype(np.float32)
    return LabelledRows(features, labels)


def registered(ctx: Context, model: ProbabilityModel, held_out: LabelledRows) -> int:
    return (
        ModelRegistry(ctx)
        .register(
            "fraud",
            onnx_bytes=to_onnx(model),
            profile=ReferenceProfile.from_columns(
                {n: held_out.features[:, i] for i, n in enumerate(FEATURES)}
            ),
            metrics={"auc": 0.99},  # what it scored on its own rows: not used
            lineage={},
            feature_names=FEATURES,
        )
        .version
    )


@pytest.mark.parametrize(
    ("production_weights", "candidate_weights", "verdict"),
    [
        ((0.0, 1.0), (2.0, 0.0), Verdict.BETTER),  # production looks at noise
        ((2.0, 0.0), (0.0, 1.0), Verdict.WORSE),
        ((2.0, 0.0), (3.0, 0.0), Verdict.ON_PAR),  # same ranking, same AUC
    ],
)
def test_the_verdict_comes_from_both_models_on_the_same_rows(
    ctx: Context,
    held_out: LabelledRows,
    production_weights: tuple[float, float],
    candidate_weights: tuple[float, float],
    verdict: Verdict,
) -> None:
    version = registered(ctx, logistic(production_weights), held_out)
    candidate = logistic(candidate_weights)
    scored = evaluate(held_out.labels, onnx_predict(to_onnx(candidate), held_out.features))
    comparison = compare_with_production(
        scored, ModelRegistry(ctx).load_verified("fraud", version), held_out
    )
    assert comparison.verdict == verdict
    assert comparison.production.rows == held_out.rows
    lineage = comparison.to_lineage()
    assert lineage["production_version"] == version
    assert lineage["auc_delta"] == pytest.approx(scored.auc - comparison.production.auc)
    # Registered metrics (0.99) are not what it was judged by.
    assert lineage["production_on_same_rows"]["auc"] < 0.99
    # The verdict is the margin applied to the delta, in every case.
    delta = lineage["auc_delta"]
    assert {
        Verdict.BETTER: delta > AUC_MARGIN,
        Verdict.WORSE: delta < -AUC_MARGIN,
        Verdict.ON_PAR: abs(delta) <= AUC_MARGIN,
    }[verdict]
