"""The model spec: one model's contract, ``feature_repo/models/<model>.yaml``.

It names the dataset the model learns from, that dataset's entity key and
label, the model's inputs in the order of its input vector, and its family
(with the family's own settings). Everything downstream reads it: the Feast
feature service of the model, the training job, the training launcher (which
models a dataset's new data trains), and ``falaj predict``. A spec is checked
against its dataset's schema by ``falaj.feature_repo.FeatureRepo``.

Both families train on the same Ray ``TorchTrainer`` job: a logistic regression
is the network with no hidden layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from falaj.errors import ConfigError
from falaj.problems import read_yaml, validation_problems
from falaj.schema import NUMERIC, FeatureSchema

#: The folder of the feature repository holding one ``<model>.yaml`` per model.
MODELS_DIR = "models"
#: The registry's rule for a model name (``falaj.registry``), which also names its endpoint.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
#: The hidden layers of an ``mlp`` whose spec names none.
MLP_HIDDEN: tuple[int, ...] = (32, 16)


class ModelFamily(StrEnum):
    MLP = "mlp"
    LOGISTIC_REGRESSION = "logistic_regression"


class TrainingOptions(BaseModel):
    """Hyper-parameters a spec may set; those it leaves out take the job's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    learning_rate: float | None = Field(default=None, gt=0)
    weight_decay: float | None = Field(default=None, ge=0)
    seed: int | None = None

    def overrides(self) -> dict[str, Any]:
        """The options the spec set, by name."""
        return {name: value for name, value in self.model_dump().items() if value is not None}


class _ModelFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(pattern=MODEL_NAME.pattern)
    description: str = ""
    dataset: str = Field(min_length=1)
    entity: str = Field(min_length=1)
    label: str = Field(min_length=1)
    features: tuple[str, ...] = Field(min_length=1)
    family: ModelFamily
    hidden: tuple[int, ...] | None = None
    training: TrainingOptions = TrainingOptions()

    @model_validator(mode="after")
    def _hidden_fits_the_family(self) -> _ModelFile:
        if self.family is ModelFamily.LOGISTIC_REGRESSION and self.hidden:
            raise ValueError(
                f"hidden: a logistic_regression has no hidden layers, got {list(self.hidden)}; "
                "remove hidden or use family: mlp"
            )
        if self.hidden is not None and any(width < 1 for width in self.hidden):
            raise ValueError(f"hidden: expected layer widths >= 1, got {list(self.hidden)}")
        return self


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """What one model learns from and how; ``name`` is its registry and endpoint name."""

    name: str
    dataset: str
    entity: str
    label: str
    #: The model's inputs, in the order of its input vector.
    features: tuple[str, ...]
    family: ModelFamily
    #: The hidden layer widths of the network; () for a logistic regression.
    hidden: tuple[int, ...]
    training: TrainingOptions = field(default_factory=TrainingOptions)
    description: str = ""

    @classmethod
    def load(cls, path: Path) -> ModelSpec:
        raw = read_yaml(path, "model spec")
        try:
            parsed = _ModelFile.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(validation_problems(exc))
            raise ConfigError(f"{path} does not fit the model spec format: {problems}") from None
        if parsed.model != path.stem:
            raise ConfigError(
                f"{path} declares model {parsed.model!r}; expected {path.stem!r}, the file's "
                f"name (rename the file to {parsed.model}.yaml or change its model:)"
            )
        if parsed.family is ModelFamily.MLP:
            hidden = parsed.hidden if parsed.hidden else MLP_HIDDEN
        else:
            hidden = ()
        return cls(
            name=parsed.model,
            dataset=parsed.dataset,
            entity=parsed.entity,
            label=parsed.label,
            features=parsed.features,
            family=parsed.family,
            hidden=hidden,
            training=parsed.training,
            description=parsed.description,
        )

    def problems_with(self, schema: FeatureSchema) -> list[str]:
        """Why this spec cannot read ``schema``'s dataset; empty when it can."""
        problems: list[str] = []
        if self.entity != schema.entity:
            problems.append(
                f"entity {self.entity!r} is not the entity of dataset {schema.dataset!r} "
                f"({schema.entity!r})"
            )
        if self.label != schema.label:
            problems.append(
                f"label {self.label!r} is not the label of dataset {schema.dataset!r} "
                f"({schema.label!r})"
            )
        repeated = sorted({name for name in self.features if self.features.count(name) > 1})
        if repeated:
            problems.append(f"features {repeated} are listed more than once")
        stored = set(schema.stored_features)
        for name in dict.fromkeys(self.features):
            if name not in schema.column_names:
                problems.append(
                    f"feature {name!r} is not a column of dataset {schema.dataset!r}; its "
                    f"features are {list(schema.stored_features)}"
                )
            elif name not in stored:
                problems.append(
                    f"feature {name!r} is the dataset's entity, timestamp or label, not a feature"
                )
            elif schema.column(name).pii:
                problems.append(
                    f"feature {name!r} is pii: it is pseudonymized at ingest, so a model "
                    "cannot read its values"
                )
            elif schema.column(name).dtype not in NUMERIC:
                problems.append(
                    f"feature {name!r} is {schema.column(name).dtype}; a model input must be "
                    "float or int"
                )
        return problems


def load_model_specs(repo: Path) -> dict[str, ModelSpec]:
    """Every model spec of the feature repository at ``repo``, by name; none is fine."""
    folder = repo / MODELS_DIR
    specs: dict[str, ModelSpec] = {}
    problems: list[str] = []
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        try:
            spec = ModelSpec.load(path)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        specs[spec.name] = spec
    if problems:
        raise ConfigError("; ".join(problems))
    return specs
