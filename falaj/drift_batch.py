"""Batch drift scoring: a whole file scored against a model version's reference profile.

The drift function scores windows of live traffic; this scores a file someone
has at hand (last month's transactions, a partner's extract) the same way,
with the same statistics (``drift_statistics``) and the same rule for what
counts as drift (``DriftStatistic.drifted`` against ``Settings.drift_thresholds``;
prediction drift is scored and shown but decides nothing, as in ``drift_policy``).

Memory stays bounded by one column, not by the file: a file of 10 million rows
and 60 columns is 4.8 GB of float64 but is never held whole.

- Parquet is read one column at a time, batch by batch, into one float64 array
  (8 bytes a row) that is sorted in place; categorical columns are only counted,
  batch by batch, so they cost nothing per row.
- CSV and JSON lines cannot be read one column at a time, so they are first
  converted once, streaming block by block, into a temporary Parquet file of
  only the profiled columns, with one type per column fixed up front (pyarrow
  infers a streamed file's types from its first block and fails when a later
  block disagrees).
- One thread reads and sorts the next column while the caller's thread scores
  the current one: NumPy's sort and pyarrow's decoding release the GIL, so
  both cores work, and at most two columns are in memory. Columns are scored
  one at a time, because KS and Wasserstein allocate temporaries several times
  a column's size while they run.

Values are matched to the profile as the drift function matches them: a
missing value (null, NaN) is left out, a category the profile does not name
counts as ``__other__``. Text files carry numbers as text, so a text value
that reads as a number ("1", "1.0") counts as that number where the profile
keyed a category by a number (integer codes, flags).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from falaj.distribution import FloatArray
from falaj.drift_statistics import STATISTICS, Column, DriftStatistic, StatisticValue, statistic
from falaj.errors import SchemaError, StorageError
from falaj.profile import (
    OTHER,
    PREDICTION,
    CategoryProfile,
    ColumnProfile,
    FeatureProfile,
    ReferenceProfile,
)

#: File suffix -> how it is read. JSON is JSON lines: one object a line.
FORMATS: Mapping[str, str] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
}
#: Rows read from Parquet at a time while a column is gathered.
BATCH_ROWS = 1 << 18
#: Bytes of CSV or JSON text parsed at a time while converting; each block
#: becomes one row group of the temporary Parquet file.
BLOCK_BYTES = 8 << 20
#: Lines of a JSON lines file read to learn its columns and their JSON types.
JSON_SAMPLE_LINES = 1000

#: ``progress(column, done, total)``, called in the caller's thread after each column.
Progress = Callable[[str, int, int], None]

# A number as text, for matching text to categories keyed by numbers.
_NUMBER_TEXT = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


@dataclass(frozen=True)
class Shares:
    """What a plot of one column shows: the reference's and the file's share per bin or category."""

    labels: tuple[str, ...]
    reference: tuple[float, ...]
    current: tuple[float, ...]


@dataclass(frozen=True)
class ColumnDrift:
    """How one column of the file compares with its reference."""

    name: str
    kind: str
    #: Values scored: finite numbers, or present categories.
    rows: int
    #: Values left out: null or NaN (numeric columns: also infinite).
    missing: int
    #: Each statistic that applies to the column, by name (empty when no value was scored).
    values: Mapping[str, StatisticValue]
    #: Per statistic with a threshold: whether it crosses it. A statistic without
    #: one is shown but decides nothing, as ``Settings.drift_thresholds`` says.
    drifted: Mapping[str, bool]
    shares: Shares
    #: Numeric columns: quantile key ("p01") -> (reference, file); empty for categories.
    quantiles: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def any_drifted(self) -> bool:
        return any(self.drifted.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "rows": self.rows,
            "missing": self.missing,
            "drifted": self.any_drifted,
            "statistics": {
                name: {
                    "value": _finite_or_none(value.value),
                    "p_value": None if value.p_value is None else _finite_or_none(value.p_value),
                    "drifted": self.drifted.get(name),
                }
                for name, value in self.values.items()
            },
            "shares": {
                "labels": list(self.shares.labels),
                "reference": list(self.shares.reference),
                "current": list(self.shares.current),
            },
            "quantiles": {
                key: {"reference": reference, "current": _finite_or_none(current)}
                for key, (reference, current) in self.quantiles.items()
            },
        }


@dataclass(frozen=True)
class BatchReport:
    """A file scored against a reference profile: every profiled column it carries."""

    path: Path
    #: Rows in the file.
    rows: int
    statistics: tuple[str, ...]
    thresholds: Mapping[str, float]
    #: In the profile's order, ``prediction`` last.
    columns: tuple[ColumnDrift, ...]
    #: Profiled features the file does not carry (not scored).
    missing_features: tuple[str, ...]
    #: Columns of the file the profile does not know (not scored).
    unknown_columns: tuple[str, ...]

    @property
    def features(self) -> tuple[ColumnDrift, ...]:
        """The scored features, prediction left out."""
        return tuple(c for c in self.columns if c.name != PREDICTION)

    @property
    def drifted_features(self) -> tuple[str, ...]:
        """Features past a threshold; prediction drift never counts (``drift_policy``)."""
        return tuple(c.name for c in self.features if c.any_drifted)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "rows": self.rows,
            "statistics": list(self.statistics),
            "thresholds": dict(self.thresholds),
            "columns": [column.to_json() for column in self.columns],
            "drifted_features": list(self.drifted_features),
            "missing_features": list(self.missing_features),
            "unknown_columns": list(self.unknown_columns),
        }


def score_file(
    profile: ReferenceProfile,
    path: Path,
    *,
    statistics: Iterable[str] = tuple(STATISTICS),
    thresholds: Mapping[str, float],
    progress: Progress | None = None,
) -> BatchReport:
    """Score every profiled column of the file at ``path`` (Parquet, CSV or JSON lines).

    Raises ``SchemaError`` when the file's format is not supported, when it
    carries none of the profile's columns, or when a column cannot be read as
    its profile needs (text in a numeric feature); ``StorageError`` when the
    file cannot be read at all.
    """
    # Each statistic once, in the order asked for; an unknown name is refused here.
    chosen = tuple(dict.fromkeys(statistic(name).name for name in statistics))
    file_format = _format_of(path)
    references: dict[str, ColumnProfile] = dict(profile.features)
    if profile.prediction is not None:
        references[PREDICTION] = profile.prediction
    try:
        with tempfile.TemporaryDirectory(prefix="falaj-drift-") as scratch:
            parquet, names = _as_parquet(path, file_format, profile, references, Path(scratch))
            present = [name for name in references if name in names]
            with pq.ParquetFile(parquet) as opened:
                rows = opened.metadata.num_rows
            scored = _score_columns(
                parquet,
                [references[name] for name in present],
                rows=rows,
                statistics=chosen,
                thresholds=thresholds,
                progress=progress,
                source=path,
            )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise SchemaError(f"cannot read {path} as {file_format}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise SchemaError(f"cannot read {path} as {file_format}: not UTF-8 text ({exc})") from exc
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc
    return BatchReport(
        path=path,
        rows=rows,
        statistics=chosen,
        thresholds={name: thresholds[name] for name in chosen if name in thresholds},
        columns=tuple(scored[name] for name in present),
        missing_features=tuple(name for name in profile.features if name not in names),
        unknown_columns=tuple(name for name in names if name not in references),
    )


def _as_parquet(
    path: Path,
    file_format: str,
    profile: ReferenceProfile,
    references: Mapping[str, ColumnProfile],
    scratch: Path,
) -> tuple[Path, list[str]]:
    """A Parquet file of the profiled columns (``path`` itself, or converted into
    ``scratch``), and the names of every column ``path`` has."""
    if file_format == "parquet":
        names = _parquet_columns(path)
        _check_features(profile, path, names)
        return path, names
    converted = scratch / "data.parquet"
    if file_format == "csv":
        names = _csv_columns(path)
        _check_features(profile, path, names)
        _csv_to_parquet(path, converted, _wanted(references, names, _csv_type), names)
    else:
        sample = _json_sample(path)
        names = list(sample)
        _check_features(profile, path, names)
        types = _wanted(references, names, lambda r: _json_type(r, sample[r.name]))
        _json_to_parquet(path, converted, types)
    return converted, names


def _check_features(profile: ReferenceProfile, path: Path, names: Sequence[str]) -> None:
    """Refuse a file of none of the profile's features before reading any more of it:
    it is the wrong file, or the wrong model version."""
    if not any(name in profile.features for name in names):
        raise SchemaError(
            f"{path.name} has none of the profile's features: expected some of "
            f"{sorted(profile.features)}, the file has {sorted(names) or 'no columns'}"
        )


# -- scoring, one column at a time ------------------------------------------------


def _score_columns(
    parquet: Path,
    references: Sequence[ColumnProfile],
    *,
    rows: int,
    statistics: tuple[str, ...],
    thresholds: Mapping[str, float],
    progress: Progress | None,
    source: Path,
) -> dict[str, ColumnDrift]:
    """Every column, in order: one thread reads and sorts the next column while
    this one scores the current, so two cores are used and at most two columns
    are in memory. Scoring stays on one thread because KS and Wasserstein
    allocate several times a column's size while they run: two at once was
    measured at twice the peak (2.1 GB at 10 million rows) for no clear gain.
    Every column's problem is collected into one error rather than stopping
    at the first."""
    scored: dict[str, ColumnDrift] = {}
    problems: list[str] = []
    chosen = [statistic(name) for name in statistics]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="drift-read") as reader:
        queued = [reader.submit(_prepare, parquet, references[0], rows)] if references else []
        for done, reference in enumerate(references, start=1):
            try:
                column = queued.pop().result()
            except SchemaError as exc:
                problems.append(str(exc))
                column = None
            if done < len(references):
                queued.append(reader.submit(_prepare, parquet, references[done], rows))
            if column is not None:
                scored[reference.name] = _score(column, rows, chosen, thresholds)
            if progress is not None:
                progress(reference.name, done, len(references))
    if problems:
        raise SchemaError(f"{source.name}: " + "; ".join(problems))
    return scored


def _prepare(parquet: Path, reference: ColumnProfile, rows: int) -> _PreparedColumn:
    """One column read from the file: its finite values sorted, or its category counts."""
    batches = _batches(parquet, reference.name)
    if isinstance(reference, CategoryProfile):
        return _PreparedColumn(reference, counts=_count_categories(reference, batches))
    values = _gather_numbers(reference.name, batches, rows)
    values.sort()  # in place: NaN last, infinities at either end
    # The finite values, as a view: nothing is copied.
    low = np.searchsorted(values, -np.inf, side="right")
    high = np.searchsorted(values, np.inf, side="left")
    return _PreparedColumn(reference, ordered=values[low:high])


def _score(
    column: _PreparedColumn,
    rows: int,
    statistics: Sequence[DriftStatistic],
    thresholds: Mapping[str, float],
) -> ColumnDrift:
    reference = column.reference
    present = column.count
    # A column of only missing values has no distribution to score.
    scores = (
        {s.name: s.score(column) for s in statistics if s.applies_to(column)} if present else {}
    )
    if isinstance(reference, CategoryProfile):
        labels: tuple[str, ...] = (*reference.categories, OTHER)
        quantiles: dict[str, tuple[float, float]] = {}
    else:
        labels = _bin_labels(reference.edges)
        quantiles = {
            key: (value, _quantile(column.ordered, q))
            for key, value in reference.quantiles.items()
            if (q := _quantile_of_key(key)) is not None
        }
    return ColumnDrift(
        name=reference.name,
        kind=column.kind,
        rows=present,
        missing=rows - present,
        values=scores,
        # Each statistic's verdict, by the rule the drift function's policy applies.
        drifted={
            name: statistic(name).drifted(value, thresholds[name])
            for name, value in scores.items()
            if name in thresholds
        },
        shares=Shares(
            labels=labels,
            reference=tuple(reference.proportions),
            current=tuple(float(s) for s in column.shares) if present else (0.0,) * len(labels),
        ),
        quantiles=quantiles,
    )


class _PreparedColumn(Column):
    """A ``Column`` whose sorted values or category counts were gathered batch by batch.

    ``Column`` derives them from one array of raw values, copying it twice on
    the way (finite values, then sorted); at ten million rows those copies are
    what would break the memory bound, so they are handed in ready instead.
    Everything else ``Column`` derives from these two (shares, counts), so the
    statistics score it unchanged.
    """

    def __init__(
        self,
        reference: ColumnProfile,
        *,
        ordered: FloatArray | None = None,
        counts: FloatArray | None = None,
    ) -> None:
        super().__init__(reference, ordered if ordered is not None else np.empty(0))
        self._ready_ordered = ordered
        self._ready_counts = counts

    @property
    def ordered(self) -> FloatArray:
        if self._ready_ordered is None:
            raise SchemaError(f"feature {self.reference.name!r} is categorical, not numeric")
        return self._ready_ordered

    @property
    def categories(self) -> FloatArray:
        if self._ready_counts is None:
            raise SchemaError(f"feature {self.reference.name!r} is numeric, not categorical")
        return self._ready_counts


def _batches(parquet: Path, name: str) -> Iterator[pa.Array]:
    # Without pre-buffering, pyarrow holds one page, not the column's whole row
    # group (measured: 13 MB rather than 84 MB at 10 million rows).
    with pq.ParquetFile(parquet, pre_buffer=False) as opened:
        for batch in opened.iter_batches(batch_size=BATCH_ROWS, columns=[name]):
            yield batch.column(0)


def _gather_numbers(name: str, batches: Iterable[pa.Array], rows: int) -> FloatArray:
    """One column as float64, nulls as NaN, filled batch by batch into one array."""
    values = np.empty(rows, dtype=np.float64)
    at = 0
    for array in batches:
        values[at : at + len(array)] = _as_floats(name, array).to_numpy(zero_copy_only=False)
        at += len(array)
    return values[:at]


def _as_floats(name: str, array: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_null(array.type):
        return pa.nulls(len(array), pa.float64())
    try:
        return pc.cast(array, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(
            f"column {name!r} is numeric in the profile; expected numbers, got {array.type} ({exc})"
        ) from None


def _count_categories(reference: CategoryProfile, batches: Iterable[pa.Array]) -> FloatArray:
    """How many values fall in each category and in ``__other__``, batch by batch.

    Numbers match the categories the profile keyed by a number, text the
    categories of the same text (and a number's, when it reads as one).
    """
    numbered = _numbered_categories(reference)
    numbers = np.asarray([number for _, number in numbered], dtype=np.float64)
    slots = np.asarray([index for index, _ in numbered], dtype=np.intp)
    named = pa.array(reference.categories, pa.string())
    counts = np.zeros(len(reference.categories) + 1, dtype=np.int64)
    present = 0
    for array in batches:
        if pa.types.is_dictionary(array.type):
            array = array.dictionary_decode()
        if pa.types.is_null(array.type):
            continue
        if _is_number_type(array.type):
            floats = pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False)
            floats = floats[np.isfinite(floats)]
            present += floats.size
            _add_numbers(counts, floats, numbers, slots)
            continue
        texts = _as_text(reference.name, array)
        present += len(texts) - texts.null_count
        slot = pc.index_in(texts, value_set=named)
        found = slot.drop_null().to_numpy(zero_copy_only=False)
        counts[: len(named)] += np.bincount(found, minlength=len(named))
        if numbers.size:
            unmatched = texts.filter(pc.and_(pc.is_null(slot), pc.is_valid(texts)))
            number_texts = unmatched.filter(pc.match_substring_regex(unmatched, _NUMBER_TEXT))
            floats = pc.cast(number_texts, pa.float64()).to_numpy(zero_copy_only=False)
            _add_numbers(counts, floats, numbers, slots)
    counts[-1] = present - counts[:-1].sum()
    result: FloatArray = counts.astype(np.float64)
    return result


def _add_numbers(
    counts: np.ndarray, floats: FloatArray, numbers: FloatArray, slots: np.ndarray
) -> None:
    for number, slot in zip(numbers, slots, strict=True):
        counts[slot] += int(np.count_nonzero(floats == number))


def _numbered_categories(reference: CategoryProfile) -> list[tuple[int, float]]:
    """(index, number) of each category that is the profile's own key of a number.

    The profile keys an integer code as "1", not "1.0"; asking it for the key
    of the number each category reads as keeps that rule in one place.
    """
    numbered = []
    for index, category in enumerate(reference.categories):
        try:
            number = float(category)
        except ValueError:
            continue
        if not math.isfinite(number):
            continue
        keys = CategoryProfile.from_values(reference.name, np.asarray([number])).categories
        if keys == (category,):
            numbered.append((index, number))
    return numbered


def _is_number_type(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_integer(data_type)
        or pa.types.is_floating(data_type)
        or pa.types.is_boolean(data_type)
        or pa.types.is_decimal(data_type)
    )


def _as_text(name: str, array: pa.Array) -> pa.Array:
    if pa.types.is_string(array.type):
        return array
    try:
        return pc.cast(array, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(
            f"column {name!r} is categorical in the profile; expected text or numbers, got "
            f"{array.type} ({exc})"
        ) from None


def _bin_labels(edges: Sequence[float]) -> tuple[str, ...]:
    """Right-closed bins as people read them: ``<= a``, ``(a, b]``, ``> z``."""
    if not edges:
        return ("all",)
    inner = [f"({a:.4g}, {b:.4g}]" for a, b in itertools.pairwise(edges)]
    return (f"<= {edges[0]:.4g}", *inner, f"> {edges[-1]:.4g}")


def _quantile_of_key(key: str) -> float | None:
    """0.01 for "p01", the profile's way of naming its quantiles."""
    if not re.fullmatch(r"p\d{2}", key):
        return None
    return int(key[1:]) / 100


def _quantile(ordered: FloatArray, q: float) -> float:
    """NumPy's default ("linear") quantile of values already sorted, without its copy."""
    if ordered.size == 0:
        return math.nan
    at = q * (ordered.size - 1)
    low = math.floor(at)
    high = min(low + 1, ordered.size - 1)
    return float(ordered[low] + (at - low) * (ordered[high] - ordered[low]))


def _finite_or_none(value: float) -> float | None:
    # JSON has no infinity; the verdict ("drifted") carries what an infinite value means.
    return value if math.isfinite(value) else None


# -- reading the file --------------------------------------------------------------


def _format_of(path: Path) -> str:
    file_format = FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise SchemaError(
            f"cannot score {path.name}: expected a file ending in {', '.join(FORMATS)} "
            f"(Parquet, CSV or JSON lines), got {path.suffix or 'no extension'!r}"
        )
    return file_format


def _parquet_columns(path: Path) -> list[str]:
    with pq.ParquetFile(path) as opened:
        return list(opened.schema_arrow.names)


def _wanted(
    references: Mapping[str, ColumnProfile],
    names: Sequence[str],
    type_of: Callable[[ColumnProfile], pa.DataType],
) -> dict[str, pa.DataType]:
    """The profiled columns the file has, with the type each is converted to, in file order."""
    return {name: type_of(references[name]) for name in names if name in references}


def _csv_type(reference: ColumnProfile) -> pa.DataType:
    # Categories stay text: a code column read as numbers from its first
    # block would fail on a later "unknown"; text that reads as a number is
    # still matched to a number's category (``_count_categories``).
    return pa.string() if isinstance(reference, CategoryProfile) else pa.float64()


def _csv_columns(path: Path) -> list[str]:
    # Opening parses the header and one block (of any size a header may need).
    reader = pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(block_size=BLOCK_BYTES))
    try:
        return list(reader.schema.names)
    finally:
        reader.close()


def _csv_to_parquet(
    path: Path, target: Path, types: Mapping[str, pa.DataType], names: Sequence[str]
) -> None:
    convert = pa_csv.ConvertOptions(
        column_types=dict(types),
        include_columns=list(types),
        strings_can_be_null=True,  # an empty field is a missing value, as in pandas
    )
    try:
        # Opening already parses the first block, so it fails like any later one.
        reader = pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(block_size=BLOCK_BYTES),
            convert_options=convert,
        )
        _write_parquet(reader, target)
    except pa.ArrowInvalid as exc:
        # pyarrow names a column by its place in the file ("In CSV column #2").
        place = re.search(r"CSV column #(\d+)", str(exc))
        if place is None or int(place[1]) >= len(names):
            raise
        name, found = names[int(place[1])], str(exc).rsplit(": ", 1)[-1]
        raise SchemaError(
            f"{path.name}: column {name!r} is numeric in the profile; expected numbers, got {found}"
        ) from None


def _json_sample(path: Path) -> dict[str, list[Any]]:
    """The first lines' values per column: the file's columns, and each one's JSON types."""
    sample: dict[str, list[Any]] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if number > JSON_SAMPLE_LINES:
                break
            if line.strip():
                for name, value in _json_object(path, number, line).items():
                    sample.setdefault(name, []).append(value)
    return sample


def _json_object(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        found = exc.msg
    else:
        if isinstance(row, dict):
            return row
        found = f"a JSON {type(row).__name__}"
    raise SchemaError(
        f"{path.name} line {number}: expected one JSON object a line (JSON lines), got {found}"
    )


def _json_type(reference: ColumnProfile, values: Sequence[Any]) -> pa.DataType:
    """The one type a JSON column is read as: pyarrow reads JSON strings only as
    text, numbers only as numbers, so categories take the type their first
    values have, or, when those are all null, the type the profile's keys have."""
    if isinstance(reference, FeatureProfile):
        return pa.float64()
    kinds = {_json_kind(value) for value in values if value is not None}
    if kinds == {"text"}:
        return pa.string()
    if kinds == {"bool"}:
        return pa.bool_()
    if kinds == {"number"}:
        return pa.float64()
    if not kinds:
        return pa.float64() if _numbered_categories(reference) else pa.string()
    raise SchemaError(
        f"column {reference.name!r} holds JSON values of the kinds {sorted(kinds)}; expected "
        "one kind a column: all strings, all numbers or all booleans"
    )


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "text" if isinstance(value, str) else type(value).__name__


def _json_to_parquet(path: Path, target: Path, types: Mapping[str, pa.DataType]) -> None:
    parse = pa_json.ParseOptions(
        explicit_schema=pa.schema(list(types.items())), unexpected_field_behavior="ignore"
    )
    try:
        reader = pa_json.open_json(
            path, read_options=pa_json.ReadOptions(block_size=BLOCK_BYTES), parse_options=parse
        )
        _write_parquet(reader, target)
    except pa.ArrowInvalid as exc:
        read_as = ", ".join(f"{name} as {data_type}" for name, data_type in types.items())
        raise SchemaError(
            f"{path.name}: expected one JSON type a column, numbers for numeric features "
            f"(read {read_as}), got {exc}"
        ) from None


def _write_parquet(reader: pa.RecordBatchReader, target: Path) -> None:
    """Every block the reader parses, one row group each: only one block is ever in memory."""
    with pq.ParquetWriter(target, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
