"""The feature repository: datasets and model specs checked together, and where a file belongs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from falaj.errors import ConfigError, SchemaError
from falaj.feature_repo import FeatureRepo, load_repo
from falaj.settings import PROJECT_ROOT, Settings

LOANS = """\
dataset: loans
entity: applicant_id
timestamp: applied_at
label: defaulted
columns:
  - {name: applicant_id, dtype: string}
  - {name: applied_at, dtype: timestamp}
  - {name: income, dtype: float}
  - {name: full_name, dtype: string, pii: true}
  - {name: defaulted, dtype: int}
"""
LOAN_MODEL = """\
model: loan_default
dataset: loans
entity: applicant_id
label: defaulted
features: [income]
family: logistic_regression
"""


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    """The project's repository with a second dataset and its model beside the demo's."""
    repo = tmp_path / "feature_repo"
    shutil.copytree(PROJECT_ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data"))
    (repo / "datasets" / "loans.yaml").write_text(LOANS)
    (repo / "models" / "loan_default.yaml").write_text(LOAN_MODEL)
    return repo


def test_the_project_repository_holds_the_demo() -> None:
    repo = load_repo(Settings())
    assert list(repo.datasets) == ["transactions"]
    assert list(repo.models) == ["fraud"]
    assert repo.only_model().name == "fraud"
    # One dataset: its files may land anywhere in the bucket.
    assert repo.dataset_of_key("day1.csv").dataset == "transactions"
    assert repo.dataset_of_key("2026/11/day1.csv").dataset == "transactions"


def test_datasets_and_models_side_by_side(repo_path: Path) -> None:
    repo = FeatureRepo.load(repo_path)
    assert list(repo.datasets) == ["loans", "transactions"]
    assert [m.name for m in repo.models_of("loans")] == ["loan_default"]
    assert [m.name for m in repo.models_of("transactions")] == ["fraud"]
    assert repo.dataset_of_key("loans/2026/apps.csv").dataset == "loans"
    assert repo.dataset_of_key("transactions/day1.csv").dataset == "transactions"
    with pytest.raises(SchemaError, match=r"one of loans/, transactions/; land it as e\.g\."):
        repo.dataset_of_key("day1.csv")
    with pytest.raises(SchemaError, match=r"cannot tell which dataset 'cards/day1\.csv'"):
        repo.dataset_of_key("cards/day1.csv")
    with pytest.raises(ConfigError, match=r"holds 2 models \(fraud, loan_default\)"):
        repo.only_model()
    with pytest.raises(ConfigError, match=r"no model 'credit'.*add models/credit\.yaml"):
        repo.model("credit")


def test_a_model_that_does_not_fit_its_dataset_is_refused_with_every_problem(
    repo_path: Path,
) -> None:
    (repo_path / "models" / "loan_default.yaml").write_text(
        LOAN_MODEL.replace("[income]", "[income, full_name]")
    )
    (repo_path / "models" / "churn.yaml").write_text(
        LOAN_MODEL.replace("loan_default", "churn").replace("dataset: loans", "dataset: accounts")
    )
    with pytest.raises(ConfigError) as refused:
        FeatureRepo.load(repo_path)
    message = str(refused.value)
    assert "model 'churn': dataset 'accounts' is not in the repository" in message
    assert "add datasets/accounts.yaml" in message
    assert "model 'loan_default': feature 'full_name' is pii" in message
