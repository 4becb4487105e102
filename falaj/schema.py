"""The feature schema: one contract for a dataset, read from ``feature_repo/schema.yaml``.

The same file says what ingest accepts (types, nulls, ranges, categories), what
Feast stores, and which columns, in which order, a model reads. Validation is
vectorised: each check is one pandas expression over a whole chunk, and only
rejected rows are ever looked at one by one. Every reason a row fails is
collected, not just the first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from falaj.errors import ConfigError, SchemaError
from falaj.settings import Settings

SCHEMA_FILE = "schema.yaml"


class DType(StrEnum):
    STRING = "string"
    TIMESTAMP = "timestamp"
    FLOAT = "float"
    INT = "int"


NUMERIC = frozenset({DType.FLOAT, DType.INT})


class ColumnSpec(BaseModel):
    """One column of the contract."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    dtype: DType
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    allowed: tuple[str, ...] | None = None
    pii: bool = False
    model_input: bool = False
    description: str = ""

    @model_validator(mode="after")
    def _bounds_fit_the_type(self) -> ColumnSpec:
        if (self.min is not None or self.max is not None) and self.dtype not in NUMERIC:
            raise ValueError(f"min/max apply to float or int columns, not {self.dtype}")
        if self.allowed is not None and self.dtype is not DType.STRING:
            raise ValueError(f"allowed values apply to string columns, not {self.dtype}")
        if self.model_input and self.dtype not in NUMERIC:
            raise ValueError(f"a model input must be float or int, got {self.dtype}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class _SchemaFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = Field(min_length=1)
    entity: str
    timestamp: str
    label: str
    columns: tuple[ColumnSpec, ...] = Field(min_length=1)


@dataclass(frozen=True)
class RowRejection:
    """One row that failed the contract, with every reason, and the row as it came."""

    row_number: int
    reasons: list[str]
    row: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"row_number": self.row_number, "reasons": self.reasons, "row": self.row}


@dataclass(frozen=True)
class ValidationResult:
    #: Rows that passed, typed: strings as ``object``, timestamps as UTC, ints as int64.
    good: pd.DataFrame
    rejected: list[RowRejection]

    @property
    def rows_total(self) -> int:
        return len(self.good) + len(self.rejected)


class SeenKeys:
    """The (entity, timestamp) keys accepted so far in one file, across its chunks.

    Keys are kept as 64-bit hashes beside their row numbers (16 bytes a row), so
    a file of millions of rows is checked for duplicates in bounded memory.
    """

    def __init__(self) -> None:
        self._hashes: npt.NDArray[np.uint64] = np.empty(0, dtype=np.uint64)
        self._rows: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)

    def first_rows(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """The row number each key was first accepted at, or -1 when it is new."""
        found = np.full(len(hashes), -1, dtype=np.int64)
        if len(self._hashes) == 0 or len(hashes) == 0:
            return found
        at = np.searchsorted(self._hashes, hashes)
        inside = at < len(self._hashes)
        hit = inside.copy()
        hit[inside] = self._hashes[at[inside]] == hashes[inside]
        found[hit] = self._rows[at[hit]]
        return found

    def add(self, hashes: npt.NDArray[np.uint64], rows: npt.NDArray[np.int64]) -> None:
        merged_hashes = np.concatenate([self._hashes, hashes])
        merged_rows = np.concatenate([self._rows, rows])
        order = np.argsort(merged_hashes, kind="stable")
        self._hashes, self._rows = merged_hashes[order], merged_rows[order]


@dataclass(frozen=True)
class FeatureSchema:
    """The contract of one dataset: its entity, timestamp, label and columns."""

    dataset: str
    entity: str
    timestamp: str
    label: str
    columns: tuple[ColumnSpec, ...]
    _by_name: Mapping[str, ColumnSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {column.name: column for column in self.columns}
        problems: list[str] = []
        if len(by_name) != len(self.columns):
            names = [c.name for c in self.columns]
            problems.append(
                f"duplicate column names {sorted({n for n in names if names.count(n) > 1})}"
            )
        for role, name, dtype in (
            ("entity", self.entity, DType.STRING),
            ("timestamp", self.timestamp, DType.TIMESTAMP),
            ("label", self.label, DType.INT),
        ):
            column = by_name.get(name)
            if column is None:
                problems.append(f"{role} {name!r} is not among the columns")
            elif column.dtype is not dtype:
                problems.append(f"{role} {name!r} must be {dtype}, got {column.dtype}")
            elif column.nullable:
                problems.append(f"{role} {name!r} cannot be nullable")
            elif column.model_input:
                problems.append(f"{role} {name!r} cannot be a model input")
        if not any(c.model_input for c in self.columns):
            problems.append("no column is a model input")
        if problems:
            raise ConfigError(f"feature schema {self.dataset!r}: " + "; ".join(problems))
        object.__setattr__(self, "_by_name", by_name)

    @classmethod
    def load(cls, path: Path) -> FeatureSchema:
        try:
            raw = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(
                f"cannot read the feature schema {path}: {exc.strerror}; "
                "FALAJ_FEATURE_REPO must name a folder holding schema.yaml"
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        try:
            parsed = _SchemaFile.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ConfigError(f"{path} does not fit the schema format: {problems}") from None
        return cls(
            dataset=parsed.dataset,
            entity=parsed.entity,
            timestamp=parsed.timestamp,
            label=parsed.label,
            columns=parsed.columns,
        )

    # -- what the schema says --------------------------------------------------

    def column(self, name: str) -> ColumnSpec:
        return self._by_name[name]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The model's inputs, in the order of its input vector."""
        return tuple(c.name for c in self.columns if c.model_input)

    @property
    def stored_features(self) -> tuple[str, ...]:
        """What Feast stores per entity: everything but the entity, timestamp and label."""
        skip = {self.entity, self.timestamp, self.label}
        return tuple(c.name for c in self.columns if c.name not in skip)

    @property
    def pii_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.pii)

    # -- validation ------------------------------------------------------------

    def require_columns(self, found: list[str] | tuple[str, ...]) -> None:
        """Refuse a file that lacks columns: no row of it could ever be valid."""
        missing = [name for name in self.column_names if name not in found]
        if missing:
            raise SchemaError(
                f"dataset {self.dataset!r}: missing columns {missing}; found {list(found)}. "
                f"Expected every column of the schema: {list(self.column_names)}"
            )

    def validate(
        self, frame: pd.DataFrame, *, first_row_number: int = 1, seen: SeenKeys | None = None
    ) -> ValidationResult:
        """Split rows into good (typed) and rejected (with every reason).

        ``first_row_number`` is the number of the frame's first row in its file,
        so reasons point at the right line when a file is read in chunks;
        ``seen`` carries accepted keys from earlier chunks of the same file.
        """
        self.require_columns(list(frame.columns))
        raw = frame.reset_index(drop=True)
        problems: list[pd.Series] = []
        typed: dict[str, pd.Series] = {}
        for column in self.columns:
            typed[column.name], found = _check_column(column, raw[column.name])
            problems.extend(found)
        failing = pd.concat(problems) if problems else pd.Series(dtype=object)
        ok = np.ones(len(raw), dtype=bool)
        ok[failing.index.to_numpy(dtype=np.int64)] = False
        duplicates = self._duplicates(typed, ok, first_row_number, seen or SeenKeys())
        if len(duplicates):
            ok[duplicates.index.to_numpy(dtype=np.int64)] = False
            failing = pd.concat([failing, duplicates])
        good = pd.DataFrame({name: values[ok] for name, values in typed.items()})
        good = _cast_good(self, good.reset_index(drop=True))
        return ValidationResult(good=good, rejected=_rejections(raw, failing, first_row_number))

    def _duplicates(
        self,
        typed: Mapping[str, pd.Series],
        ok: npt.NDArray[np.bool_],
        first_row_number: int,
        seen: SeenKeys,
    ) -> pd.Series:
        """Reasons for otherwise good rows whose (entity, timestamp) came before."""
        positions = np.flatnonzero(ok)
        keys = pd.DataFrame(
            {
                "entity": typed[self.entity].iloc[positions].reset_index(drop=True),
                "timestamp": typed[self.timestamp].iloc[positions].reset_index(drop=True),
            }
        )
        hashes = pd.util.hash_pandas_object(keys, index=False).to_numpy(dtype=np.uint64)
        rows = positions.astype(np.int64) + first_row_number
        first_here = pd.Series(rows).groupby(hashes).transform("first").to_numpy(dtype=np.int64)
        earlier = seen.first_rows(hashes)
        first = np.where(earlier >= 0, earlier, first_here)
        is_duplicate = first != rows
        seen.add(hashes[~is_duplicate], rows[~is_duplicate])
        if not is_duplicate.any():
            return pd.Series(dtype=object)
        message = f"duplicate ({self.entity}, {self.timestamp}): the same key came at row "
        return pd.Series(
            message + pd.Series(first[is_duplicate]).astype(str).to_numpy(dtype=object),
            index=positions[is_duplicate],
        )


def load_schema(settings: Settings) -> FeatureSchema:
    """The schema of the platform's feature repository."""
    return FeatureSchema.load(settings.feature_repo / SCHEMA_FILE)


# -- checks, one pandas expression each ---------------------------------------


def _messages(prefix: str, values: pd.Series, mask: pd.Series, *, quote: bool = False) -> pd.Series:
    shown = values[mask].astype(str).str.slice(0, 80)
    if quote:
        shown = "'" + shown + "'"
    return prefix + shown


def _check_column(column: ColumnSpec, values: pd.Series) -> tuple[pd.Series, list[pd.Series]]:
    """The column typed (NaN/NaT where it cannot be) and the reasons for its bad rows."""
    name = column.name
    found: list[pd.Series] = []
    missing = values.isna()
    stripped: pd.Series | None = None
    if column.dtype is DType.STRING:
        stripped = values.astype(str).str.strip()
        missing |= stripped.eq("")
    elif values.dtype == object:
        missing |= values.eq("")
    if not column.nullable and missing.any():
        message = f"{name}: missing; expected a value of type {column.dtype}"
        found.append(pd.Series(message, index=values.index[missing]))
    present = ~missing
    if stripped is not None:
        typed = stripped.where(present).astype(object)
        if column.allowed is not None:
            unknown = present & ~typed.isin(column.allowed)
            if unknown.any():
                prefix = f"{name}: expected one of {', '.join(column.allowed)}; got "
                found.append(_messages(prefix, values, unknown, quote=True))
        return typed, found
    if column.dtype is DType.TIMESTAMP:
        stamps = _to_utc(values)
        unparsed = present & stamps.isna()
        if unparsed.any():
            prefix = f"{name}: expected an ISO 8601 timestamp (UTC), got "
            found.append(_messages(prefix, values, unparsed, quote=True))
        return stamps, found
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    not_number = present & (numbers.isna() | ~np.isfinite(numbers.fillna(0.0)))
    if not_number.any():
        prefix = f"{name}: expected a finite number, got "
        found.append(_messages(prefix, values, not_number, quote=True))
    usable = present & ~not_number
    if column.dtype is DType.INT:
        fractional = usable & (numbers % 1 != 0)
        if fractional.any():
            found.append(_messages(f"{name}: expected a whole number, got ", values, fractional))
        usable &= ~fractional
    found.extend(_range_checks(column, values, numbers, usable))
    return numbers.where(usable), found


def _range_checks(
    column: ColumnSpec, values: pd.Series, numbers: pd.Series, usable: pd.Series
) -> list[pd.Series]:
    found: list[pd.Series] = []
    if column.min is not None:
        low = numbers <= column.min if column.min_exclusive else numbers < column.min
        op = ">" if column.min_exclusive else ">="
        mask = usable & low
        if mask.any():
            found.append(
                _messages(f"{column.name}: expected {op} {_num(column.min)}, got ", values, mask)
            )
    if column.max is not None:
        high = numbers >= column.max if column.max_exclusive else numbers > column.max
        op = "<" if column.max_exclusive else "<="
        mask = usable & high
        if mask.any():
            found.append(
                _messages(f"{column.name}: expected {op} {_num(column.max)}, got ", values, mask)
            )
    return found


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _to_utc(values: pd.Series) -> pd.Series:
    """Timestamps as UTC; a value without an offset is taken to be UTC already."""
    if isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(values):
        return pd.to_datetime(values, utc=True)
    # Parsed one by one (format="ISO8601") so one odd value cannot fail the chunk.
    return pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")


def _cast_good(schema: FeatureSchema, good: pd.DataFrame) -> pd.DataFrame:
    for column in schema.columns:
        if column.dtype is DType.INT:
            good[column.name] = good[column.name].astype("int64")
        elif column.dtype is DType.FLOAT:
            good[column.name] = good[column.name].astype("float64")
        elif column.dtype is DType.TIMESTAMP:
            good[column.name] = pd.to_datetime(good[column.name], utc=True).astype(
                "datetime64[ns, UTC]"
            )
        else:
            good[column.name] = good[column.name].astype(object)
    return good


def _rejections(raw: pd.DataFrame, failing: pd.Series, first_row_number: int) -> list[RowRejection]:
    if failing.empty:
        return []
    # groupby keeps each row's reasons in the order the checks ran.
    reasons = failing.groupby(level=0, sort=True).agg(list)
    rows = raw.iloc[reasons.index.to_numpy(dtype=np.int64)].to_dict("records")
    return [
        RowRejection(
            row_number=int(position) + first_row_number,
            reasons=[str(r) for r in row_reasons],
            row={str(k): _jsonable(v) for k, v in row.items()},
        )
        for position, row_reasons, row in zip(reasons.index, reasons.to_numpy(), rows, strict=True)
    ]


def _jsonable(value: Any) -> Any:
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)
