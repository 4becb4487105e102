"""The data-quality report of one ingested batch, gathered as its chunks go by.

What came (rows, and per column the share with no value), what was kept and
what was quarantined (per column whose rule a row broke), and how the kept
values look: ranges, mean and spread, quantiles and category counts. Memory
stays bounded whatever the batch's size: running sums, and for quantiles a
uniform sample of at most ``SAMPLE_SIZE`` values per column (the rows with
the smallest random keys, which is a uniform sample of all rows seen).

A PII column shows its null rate only: no value of it, not even a range,
leaves the ingest function (DESIGN.md).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from falaj.events import ColumnQuality, DataQuality
from falaj.schema import ColumnSpec, DType, FeatureSchema
from falaj.validation import RowRejection, Validated

SAMPLE_SIZE = 10_000
QUANTILES = {"p1": 0.01, "p5": 0.05, "p50": 0.5, "p95": 0.95, "p99": 0.99}
#: What a duplicate-key rejection counts under (its reason names no single column).
DUPLICATE_KEY = "duplicate key"


@dataclass
class _Numbers:
    count: int = 0
    total: float = 0.0
    squares: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    sample: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))
    keys: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))

    def add(self, values: npt.NDArray[np.float64], rng: np.random.Generator) -> None:
        if not len(values):
            return
        self.count += len(values)
        self.total += float(values.sum())
        self.squares += float(np.square(values).sum())
        self.low = min(self.low, float(values.min()))
        self.high = max(self.high, float(values.max()))
        sample = np.concatenate([self.sample, values])
        keys = np.concatenate([self.keys, rng.random(len(values))])
        if len(sample) > SAMPLE_SIZE:
            smallest = np.argpartition(keys, SAMPLE_SIZE)[:SAMPLE_SIZE]
            sample, keys = sample[smallest], keys[smallest]
        self.sample, self.keys = sample, keys


class QualityReport:
    def __init__(self, schema: FeatureSchema, *, seed: int = 0) -> None:
        self.schema = schema
        self.rows_total = 0
        self.rows_ingested = 0
        self.rows_quarantined = 0
        self.rejected_by_column: Counter[str] = Counter()
        self._missing: Counter[str] = Counter()
        self._numbers = {c.name: _Numbers() for c in schema.columns if _measured(c)}
        self._counts: dict[str, Counter[str]] = {
            c.name: Counter() for c in schema.columns if c.allowed is not None and not c.pii
        }
        self._rng = np.random.default_rng(seed)

    def add(self, validated: Validated) -> None:
        """One chunk: its counts, and the look of its good rows."""
        self.rows_total += validated.rows_total
        self.rows_ingested += validated.good.num_rows
        self.rows_quarantined += len(validated.rejected)
        self._missing.update(validated.missing)
        for rejection in validated.rejected:
            self.rejected_by_column.update(_columns_of(rejection))
        good = validated.good
        for name, numbers in self._numbers.items():
            values = good.column(name)
            if pa.types.is_timestamp(values.type):
                values = values.cast(pa.int64())
            numbers.add(values.to_numpy().astype(np.float64), self._rng)
        for name, counts in self._counts.items():
            for entry in pc.value_counts(good.column(name)).to_pylist():
                counts[str(entry["values"])] += int(entry["counts"])

    def report(self, *, location: str, object_version: str, report_location: str) -> DataQuality:
        return DataQuality(
            dataset=self.schema.dataset,
            location=location,
            object_version=object_version,
            rows_total=self.rows_total,
            rows_ingested=self.rows_ingested,
            rows_quarantined=self.rows_quarantined,
            rejected_by_column=dict(self.rejected_by_column),
            columns={c.name: self._column(c) for c in self.schema.columns},
            report_location=report_location,
        )

    def _column(self, column: ColumnSpec) -> ColumnQuality:
        null_rate = self._missing[column.name] / self.rows_total if self.rows_total else 0.0
        numbers = self._numbers.get(column.name)
        if numbers is None or not numbers.count:
            counts = self._counts.get(column.name)
            return ColumnQuality(null_rate=null_rate, counts=dict(counts) if counts else {})
        mean = numbers.total / numbers.count
        variance = max(0.0, numbers.squares / numbers.count - mean * mean)
        if column.dtype is DType.TIMESTAMP:
            return ColumnQuality(
                null_rate=null_rate,
                earliest=_iso(numbers.low),
                latest=_iso(numbers.high),
            )
        quantiles = np.quantile(numbers.sample, list(QUANTILES.values()))
        return ColumnQuality(
            null_rate=null_rate,
            min=numbers.low,
            max=numbers.high,
            mean=mean,
            std=math.sqrt(variance),
            quantiles={name: float(q) for name, q in zip(QUANTILES, quantiles, strict=True)},
        )


def _measured(column: ColumnSpec) -> bool:
    """Numbers and timestamps get ranges and spread; PII columns get nothing but null rates."""
    return not column.pii and column.dtype in (DType.FLOAT, DType.INT, DType.TIMESTAMP)


def _columns_of(rejection: RowRejection) -> set[str]:
    """The columns whose rules a rejected row broke (once each, however many reasons)."""
    columns = set()
    for reason in rejection.reasons:
        if reason.startswith("duplicate ("):
            columns.add(DUPLICATE_KEY)
        else:
            columns.add(reason.split(":", 1)[0])
    return columns


def _iso(nanoseconds: float) -> str:
    return np.datetime64(int(nanoseconds), "ns").astype("datetime64[us]").item().isoformat() + "Z"
