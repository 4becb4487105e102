"""The benchmark result format (DESIGN.md): rows of metric, value, unit, and a peer."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, kw_only=True)
class Row:
    metric: str
    value: float
    unit: str
    peer: str | None = None
    peer_value: float | None = None
    #: The goal an issue holds the metric to, as written there (e.g. "<= 5 ms").
    goal: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.peer_value is None or self.peer_value == 0:
            return None
        return self.value / self.peer_value

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {k: v for k, v in asdict(self).items() if v is not None}
        if self.ratio is not None:
            data["ratio"] = round(self.ratio, 4)
        return data


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def report(name: str, rows: Sequence[Row], console: Console | None = None) -> Path:
    console = console or Console()
    table = Table(title=name, title_justify="left")
    for column in ("metric", "value", "unit", "peer", "peer value", "ratio"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.metric,
            f"{row.value:.4g}",
            row.unit,
            row.peer or "",
            "" if row.peer_value is None else f"{row.peer_value:.4g}",
            "" if row.ratio is None else f"{row.ratio:.2f}",
        )
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps([row.to_json() for row in rows], indent=1) + "\n")
    return path
