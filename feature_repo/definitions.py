"""Feast definitions for `feast apply` in this folder.

Built from schema.yaml by the same function the platform uses, so a cluster's
registry and a local one hold the same entity, sources, view and service.
Feast imports every .py here (STACK.md): keep helpers in falaj, not beside this.
"""

from pathlib import Path

from falaj.features import feast_definitions
from falaj.schema import FeatureSchema

_HERE = Path(__file__).resolve().parent
_DEFINITIONS = feast_definitions(
    FeatureSchema.load(_HERE / "schema.yaml"),
    # Relative paths resolve against this folder (Feast's repo_path).
    offline_path="data/offline/transactions",
)

card = _DEFINITIONS.entity
transactions_offline = _DEFINITIONS.batch_source
transactions_push = _DEFINITIONS.push_source
transaction_features = _DEFINITIONS.feature_view
fraud_model = _DEFINITIONS.feature_service
