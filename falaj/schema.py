"""The feature schema: one contract per dataset, ``feature_repo/datasets/<dataset>.yaml``.

The same file says what ingest accepts (types, nulls, ranges, categories,
which columns are PII), what Feast stores (every column but the entity, the
timestamp and the label) and which column is the label. Which columns a model
reads, and in which order, is the model's own spec (``falaj.model_spec``).
Rows are checked against it by ``falaj.validation``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from falaj.errors import ConfigError, SchemaError
from falaj.problems import read_yaml, validation_problems
from falaj.settings import Settings

#: The folder of the feature repository holding one ``<dataset>.yaml`` per dataset.
DATASETS_DIR = "datasets"
#: A dataset's name is a Feast name, a folder of the offline store and a landing folder.
DATASET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
#: How many of a file's columns a missing-columns error names.
FOUND_SHOWN = 20


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
    description: str = ""

    @model_validator(mode="after")
    def _bounds_fit_the_type(self) -> ColumnSpec:
        if (self.min is not None or self.max is not None) and self.dtype not in NUMERIC:
            raise ValueError(f"min/max apply to float or int columns, not {self.dtype}")
        if self.allowed is not None and self.dtype is not DType.STRING:
            raise ValueError(f"allowed values apply to string columns, not {self.dtype}")
        if self.pii and self.dtype is not DType.STRING:
            # Its values become string tokens at ingest.
            raise ValueError(f"pii applies to string columns, not {self.dtype}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class _SchemaFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = Field(pattern=DATASET_NAME.pattern)
    entity: str
    timestamp: str
    label: str
    columns: tuple[ColumnSpec, ...] = Field(min_length=1)


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
            elif column.pii:
                problems.append(f"{role} {name!r} cannot be pii")
        if problems:
            raise ConfigError(f"feature schema {self.dataset!r}: " + "; ".join(problems))
        object.__setattr__(self, "_by_name", by_name)

    @classmethod
    def load(cls, path: Path) -> FeatureSchema:
        raw = read_yaml(
            path,
            "feature schema",
            hint=f"FALAJ_FEATURE_REPO must name a folder holding {DATASETS_DIR}/<dataset>.yaml",
        )
        try:
            parsed = _SchemaFile.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(validation_problems(exc))
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

    def as_stored(self) -> FeatureSchema:
        """The contract of rows as the stores keep them: a PII column holds tokens.

        A token is none of a PII column's allowed values, so rows read back from
        a store (the stream journal's, at its roll) are checked without them.
        """
        columns = tuple(
            column.model_copy(update={"allowed": None}) if column.pii else column
            for column in self.columns
        )
        return replace(self, columns=columns)

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
        present = set(found)
        missing = [name for name in self.column_names if name not in present]
        if missing:
            # A wide file's every column would make a reason too long for an event.
            shown = str(list(found[:FOUND_SHOWN]))
            if len(found) > FOUND_SHOWN:
                shown = f"{shown[:-1]}, ... and {len(found) - FOUND_SHOWN:,} more]"
            raise SchemaError(
                f"dataset {self.dataset!r}: missing columns {missing}; found {shown}. "
                f"Expected every column of the schema: {list(self.column_names)}"
            )


def load_schemas(repo: Path) -> dict[str, FeatureSchema]:
    """Every dataset of the feature repository at ``repo``, by name (sorted).

    Each file is named after the dataset it declares, so a landing folder, a
    file and a dataset name can never disagree. Every problem of every file is
    reported at once.
    """
    folder = repo / DATASETS_DIR
    files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    if not files:
        raise ConfigError(
            f"no dataset in the feature repository {repo}: expected one file per dataset, "
            f"{folder}/<dataset>.yaml (FALAJ_FEATURE_REPO names the repository)"
        )
    schemas: dict[str, FeatureSchema] = {}
    problems: list[str] = []
    for path in files:
        try:
            schema = FeatureSchema.load(path)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if schema.dataset != path.stem:
            problems.append(
                f"{path} declares dataset {schema.dataset!r}; expected {path.stem!r}, the file's "
                f"name (rename the file to {schema.dataset}.yaml or change its dataset:)"
            )
            continue
        schemas[schema.dataset] = schema
    if problems:
        raise ConfigError("; ".join(problems))
    return schemas


def load_schema(settings: Settings, dataset: str | None = None) -> FeatureSchema:
    """One dataset's schema; without a name, the repository's only dataset."""
    schemas = load_schemas(settings.feature_repo)
    if dataset is None:
        if len(schemas) != 1:
            raise ConfigError(
                f"the feature repository {settings.feature_repo} holds {len(schemas)} datasets "
                f"({', '.join(schemas)}); name the one wanted"
            )
        return next(iter(schemas.values()))
    if dataset not in schemas:
        raise ConfigError(
            f"no dataset {dataset!r} in the feature repository {settings.feature_repo}; it holds "
            f"{', '.join(schemas)} (add {DATASETS_DIR}/{dataset}.yaml to declare it)"
        )
    return schemas[dataset]
