"""The drift benchmark's Evidently peer: Evidently's data-drift report, one stattest at a time.

Run by the Evidently venv's python (``make bench`` creates ``.venv-evidently``;
this script imports neither falaj nor anything of the main venv)::

    .venv-evidently/bin/python benchmarks/drift_tools/evidently_runner.py \\
        --reference REF.parquet --current CUR.parquet \\
        --numeric n0,n1,... --categorical c0,c1,... \\
        --num-stattests psi,ks,wasserstein --cat-stattests chisquare,jensenshannon

For each stattest named, the columns it is asked for (the numeric columns if it
is in ``--num-stattests``, the categorical ones if in ``--cat-stattests``, both
if in both) go through one Evidently run with that stattest forced per column
(``DataDriftPreset(columns=..., per_column_method={column: stattest})``).
What is timed, per stattest, is Evidently's own work: building its two
``Dataset`` objects from the already-read pandas frames (it copies them and
collects per-column stats) and ``Report.run``. Not timed: imports, reading
parquet, a warm-up run per stattest on two columns' first 1,000 rows (Evidently's
lazy imports and first calls), and turning the snapshot into scores afterwards.

``--metrics value-drift`` runs only the per-column ``ValueDrift`` metrics the
preset generates, not the whole preset. The preset computes every column's
drift three times (profiled): once in its ``ValueDrift``, once in
``DriftedColumnsCount`` (Evidently's legacy ``DatasetDriftMetric``), and once
more in the legacy ``DataDriftTable`` that ``DataDriftPreset.render`` asks for,
since ``Report.run`` renders the widgets too. Scores are the same either way.

One JSON object on stdout (anything Evidently prints goes to stderr)::

    {"evidently_version": "0.7.23", "metrics": "preset", "rows": {...},
     "seconds": {"psi": 1.2, ...},              # Dataset build + Report.run
     "breakdown": {"psi": {"dataset": 0.1, "report": 1.1}, ...},
     "total_seconds": 5.0,
     "scores": {"n0": {"psi": 0.01, "ks": 0.4, ...}, ...},
     "peak_rss_mb": 900.0,                     # whole process, at the end
     "peak_rss_mb_before_evidently": 400.0}    # after reading the parquet

The definitions behind each drift_score are in ``EVIDENTLY.md`` beside this file.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import resource
import sys
import time
from typing import Any


def _names(text: str) -> list[str]:
    return [name for name in (part.strip() for part in text.split(",")) if name]


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="reference data, parquet")
    parser.add_argument("--current", required=True, help="current data, parquet")
    parser.add_argument("--numeric", type=_names, default=[], help="numeric columns, a,b,...")
    parser.add_argument("--categorical", type=_names, default=[], help="categorical columns")
    parser.add_argument("--num-stattests", type=_names, default=[], help="for numeric columns")
    parser.add_argument("--cat-stattests", type=_names, default=[], help="for categorical columns")
    parser.add_argument(
        "--metrics",
        choices=["preset", "value-drift"],
        default="preset",
        help="DataDriftPreset (default) or only its per-column ValueDrift metrics",
    )
    args = parser.parse_args(argv)
    for name in ("numeric", "categorical", "num_stattests", "cat_stattests"):
        setattr(args, name, list(dict.fromkeys(getattr(args, name))))  # each once, in order
    if set(args.numeric) & set(args.categorical):
        parser.error("a column is both --numeric and --categorical")
    if not args.numeric and not args.categorical:
        parser.error("name at least one --numeric or --categorical column")
    if args.num_stattests and not args.numeric:
        parser.error("--num-stattests without --numeric columns")
    if args.cat_stattests and not args.categorical:
        parser.error("--cat-stattests without --categorical columns")
    if not args.num_stattests and not args.cat_stattests:
        parser.error("name at least one stattest")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    import pandas as pd

    columns = args.numeric + args.categorical
    reference = pd.read_parquet(args.reference, columns=columns)
    current = pd.read_parquet(args.current, columns=columns)
    rss_before = _peak_rss_mb()

    import evidently
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    # Every stattest, in order of first mention, with the columns it is asked for.
    groups: dict[str, list[str]] = {}
    for stattest in args.num_stattests:
        groups.setdefault(stattest, []).extend(args.numeric)
    for stattest in args.cat_stattests:
        groups.setdefault(stattest, []).extend(args.categorical)

    def run(stattest: str, group: list[str], rows: int | None = None) -> tuple[Any, float, float]:
        """One Evidently run; its snapshot, the Dataset build's and the Report's seconds."""
        # The column kinds are given, not inferred: with no definition Evidently
        # calls an int column with <= 10 distinct values categorical, a float
        # column numerical, and a string column categorical unless more than half
        # its values are distinct (then it is text, and drops out of the drift).
        definition = DataDefinition(
            numerical_columns=[c for c in group if c in args.numeric],
            categorical_columns=[c for c in group if c in args.categorical],
            text_columns=[],
            datetime_columns=[],
            unknown_columns=[],
            list_columns=[],
        )
        ref_frame, cur_frame = reference[group][:rows], current[group][:rows]
        if args.metrics == "preset":
            metrics = [
                DataDriftPreset(columns=group, per_column_method=dict.fromkeys(group, stattest))
            ]
        else:
            metrics = [ValueDrift(column=column, method=stattest) for column in group]
        gc.collect()
        with contextlib.redirect_stdout(sys.stderr):
            started = time.perf_counter()
            cur_ds = Dataset.from_pandas(cur_frame, data_definition=definition)
            ref_ds = Dataset.from_pandas(ref_frame, data_definition=definition)
            built = time.perf_counter()
            snapshot = Report(metrics).run(cur_ds, ref_ds)
            finished = time.perf_counter()
        return snapshot, built - started, finished - built

    # Untimed: a first run on a small slice pays Evidently's lazy imports and
    # first-call costs, which are not the computation being compared.
    for stattest, group in groups.items():
        run(stattest, group[:2], rows=1000)

    seconds: dict[str, float] = {}
    breakdown: dict[str, dict[str, float]] = {}
    scores: dict[str, dict[str, float]] = {column: {} for column in columns}
    for stattest, group in groups.items():
        snapshot, dataset_s, report_s = run(stattest, group)
        seconds[stattest] = dataset_s + report_s
        breakdown[stattest] = {"dataset": dataset_s, "report": report_s}
        for result in snapshot.dict()["metrics"]:
            config = result["config"]
            if config["type"] != "evidently:metric_v2:ValueDrift":
                continue
            if config.get("method") != stattest:  # never: the method was forced
                raise RuntimeError(f"{config['column']}: asked for {stattest}, ran {config}")
            scores[config["column"]][stattest] = float(result["value"])
        missing = [column for column in group if stattest not in scores[column]]
        if missing:
            raise RuntimeError(f"{stattest}: no score for {missing}")
        del snapshot

    json.dump(
        {
            "evidently_version": evidently.__version__,
            "metrics": args.metrics,
            "rows": {"reference": len(reference), "current": len(current)},
            "seconds": seconds,
            "breakdown": breakdown,
            "total_seconds": sum(seconds.values()),
            "scores": scores,
            "peak_rss_mb": _peak_rss_mb(),
            "peak_rss_mb_before_evidently": rss_before,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
