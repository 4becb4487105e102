"""Model specs: the format, the families, and every reason a spec cannot read its dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from falaj.errors import ConfigError
from falaj.model_spec import MLP_HIDDEN, ModelFamily, ModelSpec, load_model_specs
from falaj.schema import FeatureSchema, load_schema
from falaj.settings import Settings

SPEC = """\
model: {name}
dataset: transactions
entity: card_id
label: is_fraud
features: [amount, hour]
family: {family}
"""


@pytest.fixture(scope="module")
def transactions() -> FeatureSchema:
    return load_schema(Settings(), "transactions")


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def test_the_demo_model_reads_its_inputs_in_order(transactions: FeatureSchema) -> None:
    spec = load_model_specs(Settings().feature_repo)["fraud"]
    assert (spec.dataset, spec.entity, spec.label) == ("transactions", "card_id", "is_fraud")
    assert spec.features == (
        "amount",
        "hour",
        "distance_km",
        "card_age_days",
        "tx_count_24h",
        "is_foreign",
    )
    assert (spec.family, spec.hidden) == (ModelFamily.MLP, (32, 16))
    assert spec.problems_with(transactions) == []


def test_each_family_has_its_layers(tmp_path: Path) -> None:
    mlp = ModelSpec.load(write(tmp_path, "a", SPEC.format(name="a", family="mlp")))
    assert mlp.hidden == MLP_HIDDEN
    wide = ModelSpec.load(
        write(tmp_path, "b", SPEC.format(name="b", family="mlp") + "hidden: [8]\n")
    )
    assert wide.hidden == (8,)
    linear = ModelSpec.load(
        write(tmp_path, "c", SPEC.format(name="c", family="logistic_regression"))
    )
    assert (linear.family, linear.hidden) == (ModelFamily.LOGISTIC_REGRESSION, ())


def test_training_options_override_only_what_they_name(tmp_path: Path) -> None:
    text = SPEC.format(name="a", family="mlp") + "training: {epochs: 5, learning_rate: 0.01}\n"
    spec = ModelSpec.load(write(tmp_path, "a", text))
    assert spec.training.overrides() == {"epochs": 5, "learning_rate": 0.01}


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        (
            "a",
            SPEC.format(name="a", family="logistic_regression") + "hidden: [4]\n",
            "a logistic_regression has no hidden layers",
        ),
        ("a", SPEC.format(name="a", family="forest"), "family: Input should be 'mlp'"),
        ("a", SPEC.format(name="a", family="mlp") + "epochs: 3\n", "epochs: Extra inputs"),
        ("a", SPEC.format(name="a", family="mlp") + "training: {epochs: 0}\n", "training.epochs"),
        ("a", SPEC.format(name="b", family="mlp"), "declares model 'b'; expected 'a'"),
        ("a", "model: a\n", "dataset: Field required"),
    ],
)
def test_a_malformed_spec_names_the_problem(
    tmp_path: Path, name: str, text: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        ModelSpec.load(write(tmp_path, name, text))


def test_every_reason_a_spec_cannot_read_its_dataset(
    tmp_path: Path, transactions: FeatureSchema
) -> None:
    text = (
        "model: a\ndataset: transactions\nentity: account_id\nlabel: amount\n"
        "features: [amount, amount, merchant_category, is_fraud, colour]\nfamily: mlp\n"
    )
    spec = ModelSpec.load(write(tmp_path, "a", text))
    assert spec.problems_with(transactions) == [
        "entity 'account_id' is not the entity of dataset 'transactions' ('card_id')",
        "label 'amount' is not the label of dataset 'transactions' ('is_fraud')",
        "features ['amount'] are listed more than once",
        "feature 'merchant_category' is string; a model input must be float or int",
        "feature 'is_fraud' is the dataset's entity, timestamp or label, not a feature",
        "feature 'colour' is not a column of dataset 'transactions'; its features are "
        "['amount', 'hour', 'distance_km', 'card_age_days', 'tx_count_24h', 'is_foreign', "
        "'merchant_category']",
    ]
