"""Drift scoring at scale: ours against Evidently's data-drift report, on the same data.

The data: ``rows`` x 50 numeric + 10 categorical features, a reference and a
production file of the same shape (Parquet), a third of the numeric columns
and a few categorical ones shifted. Both sides compute the same statistics:
PSI, Kolmogorov-Smirnov and Wasserstein for numeric columns, chi-square and
Jensen-Shannon for categorical ones.

- ``score_s_1m``: ours from the raw reference file to every score (reading it,
  building the reference profile, scoring the production file), against
  Evidently 0.7.23's data-drift report (``DataDriftPreset``) computing the same
  statistics in its own venv (``benchmarks/drift_tools/evidently_runner.py``:
  Dataset build + Report.run, imports and file reading not counted).
  ``score_s_1m_vs_column_metrics``: the same against Evidently's per-column
  drift metrics alone, without the rest of the report (quick runs: only this).
  ``score_s_1m_stored_reference``: ours with the profile already stored, as the
  platform runs (the reference is profiled once, at training).
- ``max_abs_diff_vs_reference``: the largest difference of ours from the
  reference implementation of the same definition: SciPy's ``ks_2samp`` D,
  ``wasserstein_distance`` / reference std (as Evidently's), ``chi2_contingency``
  p-value, ``jensenshannon`` (= Evidently's). PSI and chi-square are defined
  differently by Evidently (its PSI bins are equal-width over both samples, its
  chi-square a one-sample test): their differences are reported as their own
  rows, not in this one (README).
- ``peak_rss_mb_10m``: a separate process scores a 10,000,000-row file against
  the stored profile; its peak resident memory.
- ``window_10k_ms``: the drift function closing a 10,000-event window (one row
  each, 60 features): reading it back, every statistic of every feature, the
  verdict, storing the scores.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import Row, median

ROOT = Path(__file__).resolve().parent.parent
EVIDENTLY_PYTHON = ROOT / ".venv-evidently" / "bin" / "python"
NUMERIC = [f"n{i:02d}" for i in range(50)]
CATEGORICAL = [f"c{i}" for i in range(10)]
#: Rows per Parquet row group (and per generated chunk: memory stays bounded at 10M).
CHUNK = 500_000


def run(quick: bool = False) -> list[Row]:
    rows = 20_000 if quick else 1_000_000
    large = 200_000 if quick else 10_000_000
    with tempfile.TemporaryDirectory(prefix="falaj-drift-bench-") as scratch:
        folder = Path(scratch)
        reference, current = folder / "reference.parquet", folder / "current.parquet"
        write_data(reference, rows, seed=1, shifted=False)
        write_data(current, rows, seed=2, shifted=True)
        ours = score_ours(reference, current, folder / "profile.json")
        # Evidently's data-drift report as users run it (DataDriftPreset), and in
        # full runs also its per-column metrics alone (the preset computes each
        # column's drift three times over: EVIDENTLY.md), the faster peer.
        columns_only = score_evidently(reference, current, metrics="value-drift")
        peer = columns_only if quick else score_evidently(reference, current, metrics="preset")
        exact = reference_values(reference, current)
        big = folder / "large.parquet"
        write_data(big, large, seed=3, shifted=True)
        memory = score_large(folder / "profile.json", big)
        window_ms, close_ms = window_scoring_ms(
            folder / "profile.json", folder / "home", quick=quick
        )
    diffs = differences(ours["values"], peer["scores"], exact)
    size = "1m" if not quick else "20k"
    rows_out = [
        Row(
            metric=f"score_s_{size}",
            value=ours["seconds"],
            unit="s",
            peer="evidently" if not quick else "evidently ValueDrift metrics only",
            peer_value=peer["total_seconds"],
            goal="ratio <= 0.02 (>= 50x faster)",
        ),
        Row(
            metric=f"score_s_{size}_stored_reference",
            value=ours["seconds_stored"],
            unit="s",
            peer="evidently",
            peer_value=peer["total_seconds"],
        ),
        Row(
            metric="max_abs_diff_vs_reference",
            value=max(diffs["ks"], diffs["wasserstein"], diffs["chi_square"], diffs["js"]),
            unit="abs",
            goal="<= 1e-6",
        ),
        Row(metric="max_abs_diff_ks_d_vs_scipy", value=diffs["ks"], unit="abs"),
        Row(metric="max_abs_diff_wasserstein_vs_evidently", value=diffs["wasserstein"], unit="abs"),
        Row(metric="max_abs_diff_chi_square_p_vs_scipy", value=diffs["chi_square"], unit="abs"),
        Row(metric="max_abs_diff_jensen_shannon_vs_evidently", value=diffs["js"], unit="abs"),
        Row(metric="max_abs_diff_ks_p_vs_evidently", value=diffs["ks_p"], unit="abs"),
        Row(metric="max_abs_diff_psi_vs_evidently_definitional", value=diffs["psi"], unit="abs"),
        Row(
            metric="peak_rss_mb_10m" if not quick else "peak_rss_mb_200k",
            value=memory["peak_rss_mb"],
            unit="MB",
            goal="<= 1024",
        ),
        Row(
            metric="score_s_10m" if not quick else "score_s_200k", value=memory["seconds"], unit="s"
        ),
        Row(metric="window_10k_ms", value=window_ms, unit="ms", goal="<= 50"),
        Row(metric="window_10k_close_ms", value=close_ms, unit="ms"),
        Row(metric="evidently_peak_rss_mb", value=peer["peak_rss_mb"], unit="MB"),
    ]
    if not quick:  # quick runs compare with the column metrics alone already
        rows_out.insert(
            2,
            Row(
                metric=f"score_s_{size}_vs_column_metrics",
                value=ours["seconds"],
                unit="s",
                peer="evidently ValueDrift metrics only",
                peer_value=columns_only["total_seconds"],
            ),
        )
    return rows_out


# -- the data ------------------------------------------------------------------


def write_data(path: Path, rows: int, *, seed: int, shifted: bool) -> None:
    """Write ``rows`` rows in chunks (a 10M-row file never sits in memory whole)."""
    rng = np.random.default_rng(seed)
    layout = np.random.default_rng(0)  # the columns' shapes: the same in every file
    means = layout.uniform(-50, 50, len(NUMERIC))
    scales = layout.uniform(0.5, 20, len(NUMERIC))
    heavy = layout.random(len(NUMERIC)) < 0.3  # lognormal: the tails a sketch must keep
    categories = [layout.dirichlet(np.ones(10) * 2) for _ in CATEGORICAL]
    schema = pa.schema(
        [(n, pa.float64()) for n in NUMERIC] + [(c, pa.int64()) for c in CATEGORICAL]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, CHUNK):
            size = min(CHUNK, rows - start)
            columns: dict[str, np.ndarray] = {}
            for i, name in enumerate(NUMERIC):
                shift = 0.2 * scales[i] if shifted and i % 3 == 0 else 0.0
                if heavy[i]:
                    values = np.exp(rng.normal(0.0, 0.8, size)) * scales[i] + means[i] + shift
                else:
                    values = rng.normal(means[i] + shift, scales[i], size)
                columns[name] = values
            for j, name in enumerate(CATEGORICAL):
                p = categories[j]
                if shifted and j % 4 == 0:
                    p = np.roll(p, 1) * 0.5 + p * 0.5
                columns[name] = rng.choice(10, size=size, p=p)
            writer.write_table(pa.table(columns, schema=schema))


def read_column(path: Path, name: str) -> np.ndarray:
    return pq.read_table(path, columns=[name]).column(name).to_numpy()


# -- ours ----------------------------------------------------------------------


def score_ours(reference: Path, current: Path, profile_path: Path) -> dict[str, Any]:
    from falaj.drift_batch import score_file
    from falaj.drift_statistics import DEFAULT_THRESHOLDS
    from falaj.profile import ReferenceProfile

    started = time.perf_counter()
    columns = {name: read_column(reference, name) for name in NUMERIC + CATEGORICAL}
    profile = ReferenceProfile.from_columns(columns, categorical=CATEGORICAL)
    del columns
    profiled = time.perf_counter()
    report = score_file(profile, current, thresholds=DEFAULT_THRESHOLDS)
    finished = time.perf_counter()
    profile_path.write_text(json.dumps(profile.to_json()))
    values = {
        column.name: {name: (v.value, v.p_value) for name, v in column.values.items()}
        for column in report.columns
    }
    return {
        "seconds": finished - started,
        "seconds_stored": finished - profiled,
        "values": values,
    }


def score_large(profile_path: Path, data: Path) -> dict[str, float]:
    """Score ``data`` in a process of its own, so its peak memory is the scoring's alone."""
    script = (
        "import json, resource, sys, time\n"
        "from pathlib import Path\n"
        "from falaj.drift_batch import score_file\n"
        "from falaj.drift_statistics import DEFAULT_THRESHOLDS\n"
        "from falaj.profile import ReferenceProfile\n"
        "profile = ReferenceProfile.from_json(json.loads(Path(sys.argv[1]).read_text()))\n"
        "started = time.perf_counter()\n"
        "score_file(profile, Path(sys.argv[2]), thresholds=DEFAULT_THRESHOLDS)\n"
        "seconds = time.perf_counter() - started\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps({'seconds': seconds, 'peak_rss_mb': peak}))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(profile_path), str(data)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    result: dict[str, float] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def window_scoring_ms(profile_path: Path, home: Path, *, quick: bool) -> tuple[float, float]:
    """A 10,000-event window: scoring it, and the function's whole close (median of a few).

    Scoring: every statistic of every feature of the window as the store gives
    it back. The close adds reading the window from SQLite, the verdict,
    storing the scores, emptying the window and the audit entry.
    """
    from onnx import TensorProto, helper

    from falaj.context import Context
    from falaj.events import EventType, InferenceLogged, make_event, parse_event
    from falaj.profile import ReferenceProfile
    from falaj.registry import ModelRegistry
    from falaj.settings import Settings
    from functions.drift.function import DriftFunction, score_window

    features = NUMERIC + CATEGORICAL
    settings = Settings(home=home, drift_window=10_000, drift_cooldown_s=0.0)
    ctx = Context.create(settings, actor="benchmark")
    weights = helper.make_tensor("w", TensorProto.FLOAT, [len(features), 1], [0.0] * len(features))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "zero",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, len(features)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    ModelRegistry(ctx).register(
        "bench",
        onnx_bytes=model.SerializeToString(),
        profile=ReferenceProfile.from_json(json.loads(profile_path.read_text())),
        metrics={"auc": 0.5},
        lineage={"training_job_id": "benchmark"},
        feature_names=tuple(features),
    )

    class Quiet(DriftFunction):
        def emit(self, *args: Any, **kwargs: Any) -> None:
            return None  # no broker here: the alert's delivery is not what is measured

    function = Quiet()
    function.start(ctx)
    rng = np.random.default_rng(4)
    profile = ReferenceProfile.from_json(json.loads(profile_path.read_text()))
    scoring: list[float] = []
    closing: list[float] = []
    try:
        for _ in range(1 if quick else 3):
            events = []
            for _ in range(10_000):
                inputs = {n: [float(rng.normal())] for n in NUMERIC}
                inputs.update({c: [float(rng.integers(0, 10))] for c in CATEGORICAL})
                data = InferenceLogged(
                    inference_id=str(uuid.uuid4()),
                    model="bench",
                    version=1,
                    variant="stable",
                    inputs=inputs,
                    outputs=[0.0],
                )
                events.append(
                    parse_event(
                        make_event(EventType.INFERENCE_LOGGED, data, region=settings.region),
                        ctx.policy,
                    )
                )
            for event in events[:-1]:
                function.handle(event)
            window = function.windows.window("bench", 1)
            started = time.perf_counter()
            score_window(profile, window)
            scoring.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            function.handle(events[-1])  # the 10,000th row: the window is scored
            closing.append((time.perf_counter() - started) * 1000)
    finally:
        function.stop()
    return median(scoring), median(closing)


# -- the peer and the reference values -------------------------------------------


def score_evidently(reference: Path, current: Path, *, metrics: str) -> dict[str, Any]:
    if not EVIDENTLY_PYTHON.exists():
        raise RuntimeError(f"{EVIDENTLY_PYTHON} is missing: run 'make bench' (it builds the venv)")
    completed = subprocess.run(
        [
            str(EVIDENTLY_PYTHON),
            str(ROOT / "benchmarks" / "drift_tools" / "evidently_runner.py"),
            "--reference",
            str(reference),
            "--current",
            str(current),
            "--numeric",
            ",".join(NUMERIC),
            "--categorical",
            ",".join(CATEGORICAL),
            "--num-stattests",
            "psi,ks,wasserstein",
            "--cat-stattests",
            "chisquare,jensenshannon",
            "--metrics",
            metrics,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def reference_values(reference: Path, current: Path) -> dict[str, dict[str, float]]:
    """SciPy on the raw values: the definitions ours must equal."""
    from scipy import stats
    from scipy.spatial import distance

    values: dict[str, dict[str, float]] = {}
    for name in NUMERIC:
        a, b = read_column(reference, name), read_column(current, name)
        values[name] = {
            "ks": float(stats.ks_2samp(a, b, method="asymp").statistic),
            "wasserstein": float(stats.wasserstein_distance(a, b) / np.std(a)),
        }
    for name in CATEGORICAL:
        a, b = read_column(reference, name), read_column(current, name)
        counts = np.vstack((np.bincount(a, minlength=10), np.bincount(b, minlength=10)))
        counts = counts[:, counts.sum(axis=0) > 0]
        shares = counts / counts.sum(axis=1, keepdims=True)
        values[name] = {
            "chi_square": float(stats.chi2_contingency(counts, correction=False).pvalue),
            "jensen_shannon": float(distance.jensenshannon(shares[0], shares[1])),
        }
    return values


def differences(
    ours: dict[str, dict[str, tuple[float, float | None]]],
    evidently: dict[str, dict[str, float]],
    exact: dict[str, dict[str, float]],
) -> dict[str, float]:
    def worst(pairs: list[tuple[float, float]]) -> float:
        finite = [abs(a - b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
        return max(finite) if finite else math.nan

    return {
        "ks": worst([(ours[n]["ks"][0], exact[n]["ks"]) for n in NUMERIC]),
        "ks_p": worst([(ours[n]["ks"][1] or 0.0, evidently[n]["ks"]) for n in NUMERIC]),
        "wasserstein": worst(
            [(ours[n]["wasserstein"][0], evidently[n]["wasserstein"]) for n in NUMERIC]
            + [(ours[n]["wasserstein"][0], exact[n]["wasserstein"]) for n in NUMERIC]
        ),
        "chi_square": worst(
            [(ours[n]["chi_square"][1] or 0.0, exact[n]["chi_square"]) for n in CATEGORICAL]
        ),
        "js": worst(
            [(ours[n]["jensen_shannon"][0], evidently[n]["jensenshannon"]) for n in CATEGORICAL]
            + [(ours[n]["jensen_shannon"][0], exact[n]["jensen_shannon"]) for n in CATEGORICAL]
        ),
        "psi": worst([(ours[n]["psi"][0], evidently[n]["psi"]) for n in NUMERIC]),
    }
