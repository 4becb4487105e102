from __future__ import annotations

from pathlib import Path

import pytest

from falaj.audit import AuditLog
from falaj.errors import ResidencyViolation
from falaj.residency import Boundary, ResidencyPolicy


@pytest.fixture
def policy(tmp_path: Path) -> ResidencyPolicy:
    return ResidencyPolicy(
        allowed_regions=frozenset({"me-central-1", "uaenorth"}),
        local_region="me-central-1",
        storage_regions={"s3://bank-uae": "me-central-1", "s3://bank-eu": "eu-west-1"},
        audit=AuditLog(tmp_path / "audit"),
        actor="ingest",
    )


def test_local_paths_are_in_the_local_region(policy: ResidencyPolicy) -> None:
    assert policy.region_of("/srv/landing/a.csv") == "me-central-1"
    assert policy.region_of("file:///srv/landing/a.csv") == "me-central-1"
    policy.check_location("/srv/landing/a.csv")


def test_declared_in_region_bucket_is_allowed(policy: ResidencyPolicy) -> None:
    policy.check_location("s3://bank-uae/raw/tx.csv")


def test_out_of_region_bucket_is_refused_and_audited(policy: ResidencyPolicy) -> None:
    with pytest.raises(ResidencyViolation) as refused:
        policy.check_location("s3://bank-eu/raw/tx.csv", boundary=Boundary.STORAGE_WRITE)
    message = str(refused.value)
    assert "s3://bank-eu/raw/tx.csv" in message and "eu-west-1" in message
    assert refused.value.region == "eu-west-1"
    assert policy.audit is not None
    [entry] = list(policy.audit.entries())
    assert entry["action"] == "policy.refused"
    assert entry["outcome"] == "refused"
    assert entry["region"] == "eu-west-1"
    assert entry["details"]["boundary"] == "storage-write"


def test_undeclared_remote_location_is_refused(policy: ResidencyPolicy) -> None:
    with pytest.raises(ResidencyViolation, match="no known region"):
        policy.check_location("gs://somewhere/x")


def test_longest_prefix_wins(tmp_path: Path) -> None:
    policy = ResidencyPolicy(
        allowed_regions=frozenset({"me-central-1"}),
        local_region="me-central-1",
        storage_regions={"s3://bank": "me-central-1", "s3://bank/eu": "eu-west-1"},
    )
    assert policy.region_of("s3://bank/eu/x") == "eu-west-1"
    assert policy.region_of("s3://bank/uae/x") == "me-central-1"


@pytest.mark.parametrize("boundary", list(Boundary))
def test_every_boundary_refuses_a_foreign_region(
    policy: ResidencyPolicy, boundary: Boundary
) -> None:
    with pytest.raises(ResidencyViolation, match=str(boundary)):
        policy.check_region("us-east-1", resource="thing", boundary=boundary)


def test_a_bucket_prefix_does_not_cover_another_bucket(policy: ResidencyPolicy) -> None:
    # s3://bank-uae is declared; s3://bank-uae-eu is a different bucket.
    assert policy.region_of("s3://bank-uae/raw/tx.csv") == "me-central-1"
    assert policy.region_of("s3://bank-uae") == "me-central-1"
    assert policy.region_of("s3://bank-uae-eu/raw/tx.csv") is None
    with pytest.raises(ResidencyViolation, match="no known region"):
        policy.check_location("s3://bank-uae-eu/raw/tx.csv")


def test_a_feast_server_on_this_machine_is_in_the_local_region(policy: ResidencyPolicy) -> None:
    for location in (
        "redis://127.0.0.1:6379/0",
        "rediss://localhost:6380/1",
        "postgresql://[::1]:5432/registry",
    ):
        assert policy.region_of(location) == "me-central-1", location
    # Only servers: s3://localhost is a bucket of that name, wherever it is.
    assert policy.region_of("s3://localhost/x") is None


def test_a_feast_server_is_declared_by_host_for_every_port_or_by_host_and_port(
    tmp_path: Path,
) -> None:
    policy = ResidencyPolicy(
        allowed_regions=frozenset({"me-central-1"}),
        local_region="me-central-1",
        storage_regions={
            "redis://cache.internal": "me-central-1",
            "postgresql://pg.internal:5432": "me-central-1",
            "postgresql://pg.internal:6432": "eu-west-1",
            # A declared region beats "loopback is this machine" (a tunnel abroad).
            "redis://127.0.0.1:7000": "eu-west-1",
        },
        audit=AuditLog(tmp_path / "audit"),
    )
    assert policy.region_of("redis://cache.internal:6379/0") == "me-central-1"
    assert policy.region_of("redis://cache.internal:6380/5") == "me-central-1"
    assert policy.region_of("redis://cache.internal.eu:6379/0") is None
    assert policy.region_of("postgresql://pg.internal:5432/feast") == "me-central-1"
    assert policy.region_of("postgresql://pg.internal:6432/feast") == "eu-west-1"
    assert policy.region_of("postgresql://pg.internal:7432/feast") is None
    assert policy.region_of("redis://127.0.0.1:7000/0") == "eu-west-1"
    with pytest.raises(ResidencyViolation, match="outside the allowed regions"):
        policy.check_location("postgresql://pg.internal:6432/feast")
    with pytest.raises(ResidencyViolation, match="declare it in FALAJ_STORAGE_REGIONS"):
        policy.check_location("redis://cache.internal.eu:6379/0")
    assert policy.audit is not None
    assert [e["resource"] for e in policy.audit.entries()] == [
        "postgresql://pg.internal:6432/feast",
        "redis://cache.internal.eu:6379/0",
    ]
