"""Feast definitions for `feast apply` in this folder.

Built from datasets/*.yaml and models/*.yaml by the same function the platform
uses, so a cluster's registry and a local one hold the same entities, sources,
views and services: per dataset an entity (named after its join key, shared by
datasets keyed the same way), `<dataset>_offline`, `<dataset>_push` and
`<dataset>_features`; per model `<model>_model`. Feast collects the objects it
finds among this module's names, so each is given one. Feast imports every .py
here (STACK.md): keep helpers in falaj, not beside this.
"""

from pathlib import Path

from falaj.feature_repo import FeatureRepo
from falaj.features import repo_definitions

_HERE = Path(__file__).resolve().parent

for _definitions in repo_definitions(
    FeatureRepo.load(_HERE),
    # Relative paths resolve against this folder (Feast's repo_path).
    offline_root="data/offline",
):
    for _object in _definitions.objects():
        globals()[f"{type(_object).__name__}_{_object.name}"] = _object
