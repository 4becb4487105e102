"""The stored cumulative distribution: exact for few distinct values, a sketch beyond."""

from __future__ import annotations

import json

import numpy as np
import pytest

from falaj.distribution import EXACT_LIMIT, SKETCH_POINTS, CumulativeDistribution
from falaj.errors import ArtifactError, SchemaError


def test_exact_form_is_the_empirical_cdf_with_its_jumps() -> None:
    distribution = CumulativeDistribution.from_values([3.0, 1.0, 1.0, 2.0, np.nan])
    assert distribution.exact and distribution.count == 4
    x = np.array([0.0, 1.0, 1.5, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(distribution.at(x), [0.0, 0.5, 0.5, 0.75, 1.0, 1.0])
    np.testing.assert_allclose(distribution.before(x), [0.0, 0.0, 0.5, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(distribution.at(x, ordered=True), distribution.at(x))


def test_sorted_and_unsorted_lookups_agree_on_a_long_array() -> None:
    rng = np.random.default_rng(0)
    distribution = CumulativeDistribution.from_values(rng.normal(size=EXACT_LIMIT * 3))
    x = np.sort(np.concatenate((rng.normal(size=20_000), distribution.knots[:50])))
    np.testing.assert_allclose(distribution.at(x, ordered=True), distribution.at(x))
    np.testing.assert_allclose(distribution.before(x, ordered=True), distribution.before(x))


def test_a_sketch_keeps_its_size_and_the_extremes() -> None:
    rng = np.random.default_rng(1)
    values = rng.lognormal(size=50_000)
    distribution = CumulativeDistribution.from_values(values)
    assert not distribution.exact
    assert distribution.knots.size == SKETCH_POINTS + 1
    assert distribution.knots[0] == values.min() and distribution.knots[-1] == values.max()
    assert distribution.at(np.array([np.median(values)]))[0] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("size", [50, 50_000])
def test_json_round_trip(size: int) -> None:
    rng = np.random.default_rng(2)
    distribution = CumulativeDistribution.from_values(np.round(rng.normal(size=size), 3))
    restored = CumulativeDistribution.from_json("x", json.loads(json.dumps(distribution.to_json())))
    assert restored.exact == distribution.exact
    np.testing.assert_array_equal(restored.knots, distribution.knots)
    np.testing.assert_allclose(restored.cumulative, distribution.cumulative, atol=1e-12)
    assert (restored.count, restored.mean, restored.std) == (
        distribution.count,
        distribution.mean,
        distribution.std,
    )


def test_malformed_json_says_what_was_expected() -> None:
    with pytest.raises(ArtifactError, match="expected 'count', 'mean', 'std'"):
        CumulativeDistribution.from_json("amount", {"values": [1.0]})
    with pytest.raises(ArtifactError, match="non-decreasing"):
        CumulativeDistribution.from_json(
            "amount", {"count": 3, "mean": 0.0, "std": 1.0, "quantiles": [2.0, 1.0, 3.0]}
        )
    with pytest.raises(ArtifactError, match="do not sum to count"):
        CumulativeDistribution.from_json(
            "amount", {"count": 5, "mean": 0.0, "std": 1.0, "values": [1.0, 2.0], "counts": [1, 1]}
        )
    with pytest.raises(SchemaError, match="no finite values"):
        CumulativeDistribution.from_values([np.nan, np.inf])
