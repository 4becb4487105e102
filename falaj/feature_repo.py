"""The feature repository: every dataset and every model spec, checked together.

    feature_repo/
      feature_store.yaml        Feast's settings for `feast apply` on a cluster
      definitions.py            the Feast objects, built from the files below
      datasets/<dataset>.yaml   one contract per dataset (falaj.schema)
      models/<model>.yaml       one spec per model (falaj.model_spec)

Each model names its dataset; a model whose dataset, entity, label or features
do not fit is refused with every problem of every file at once. A landed file
belongs to the dataset named by its key's first folder (``<dataset>/...``); a
repository of one dataset also takes files anywhere in the bucket.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from falaj.errors import ConfigError, SchemaError
from falaj.model_spec import MODELS_DIR, ModelSpec, load_model_specs
from falaj.schema import DATASETS_DIR, FeatureSchema, load_schemas
from falaj.settings import Settings


@dataclass(frozen=True)
class FeatureRepo:
    path: Path
    datasets: Mapping[str, FeatureSchema]
    models: Mapping[str, ModelSpec]

    @classmethod
    def load(cls, path: Path) -> FeatureRepo:
        datasets = load_schemas(path)
        models = load_model_specs(path)
        problems: list[str] = []
        for spec in models.values():
            schema = datasets.get(spec.dataset)
            if schema is None:
                problems.append(
                    f"model {spec.name!r}: dataset {spec.dataset!r} is not in the repository "
                    f"(it holds {', '.join(datasets)}; add {DATASETS_DIR}/{spec.dataset}.yaml)"
                )
                continue
            problems.extend(f"model {spec.name!r}: {p}" for p in spec.problems_with(schema))
        if problems:
            raise ConfigError(f"the feature repository {path}: " + "; ".join(problems))
        return cls(path=path, datasets=datasets, models=models)

    def dataset(self, name: str) -> FeatureSchema:
        if name not in self.datasets:
            raise ConfigError(
                f"no dataset {name!r} in the feature repository {self.path}; it holds "
                f"{', '.join(self.datasets)} (add {DATASETS_DIR}/{name}.yaml to declare it)"
            )
        return self.datasets[name]

    def model(self, name: str) -> ModelSpec:
        if name not in self.models:
            held = ", ".join(self.models) or "none"
            raise ConfigError(
                f"no model {name!r} in the feature repository {self.path}; it holds {held} "
                f"(add {MODELS_DIR}/{name}.yaml to declare it)"
            )
        return self.models[name]

    def models_of(self, dataset: str) -> tuple[ModelSpec, ...]:
        """The models that learn from ``dataset``, by name."""
        return tuple(spec for spec in self.models.values() if spec.dataset == dataset)

    def only_model(self) -> ModelSpec:
        """The repository's model, when it has exactly one."""
        if len(self.models) != 1:
            held = ", ".join(self.models) or "none"
            raise ConfigError(
                f"the feature repository {self.path} holds {len(self.models)} models ({held}); "
                "name the one wanted"
            )
        return next(iter(self.models.values()))

    def dataset_of_key(self, key: str) -> FeatureSchema:
        """The dataset a landed object belongs to, by its key's first folder."""
        folder, separator, _ = key.partition("/")
        if separator and folder in self.datasets:
            return self.datasets[folder]
        if len(self.datasets) == 1:
            return next(iter(self.datasets.values()))
        name = key.rsplit("/", 1)[-1]
        raise SchemaError(
            f"cannot tell which dataset {key!r} belongs to: expected its key to start with a "
            f"dataset's folder, one of {', '.join(f'{d}/' for d in self.datasets)}; "
            f"land it as e.g. '{next(iter(self.datasets))}/{name}'"
        )


def load_repo(settings: Settings) -> FeatureRepo:
    """The platform's feature repository (``FALAJ_FEATURE_REPO``)."""
    return FeatureRepo.load(settings.feature_repo)
