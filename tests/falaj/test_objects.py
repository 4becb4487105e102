"""Bucket and key to location: the one check both the storage source and ingest go through."""

from __future__ import annotations

from pathlib import Path

import pytest

from falaj.context import Context
from falaj.errors import ObjectKeyError, ResidencyViolation, StorageError
from falaj.objects import (
    LANDING_BUCKET,
    Buckets,
    decode_key,
    encode_key,
    key_problem,
)
from falaj.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / ".falaj",
        storage_regions={"s3://uae-bucket": "me-central-1", "s3://eu-bucket": "eu-west-1"},
    )


@pytest.fixture
def buckets(ctx: Context) -> Buckets:
    ctx.paths.landing.mkdir(parents=True)
    return Buckets.of(ctx)


def _refusals(ctx: Context) -> list[str]:
    return [e["details"]["reason"] for e in ctx.audit.entries() if e["action"] == "storage.refused"]


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("\\windows\\system.ini", "absolute"),
        ("../secret.csv", "'..' segment"),
        ("2026/../../secret.csv", "'..' segment"),
        ("2026/..", "'..' segment"),
        ("2026\\..\\..\\secret.csv", "'..' segment"),
        ("day1\x00.csv", "NUL"),
    ],
)
def test_keys_that_could_leave_the_bucket_are_named(key: str, problem: str) -> None:
    found = key_problem(key)
    assert found is not None and problem in found


@pytest.mark.parametrize("key", ["day1.csv", "2026/11/day1.csv", "..day1.csv", "a..b/c.csv"])
def test_ordinary_keys_pass(key: str) -> None:
    assert key_problem(key) is None


def test_keys_travel_url_encoded_as_s3_sends_them() -> None:
    key = "2026/tx day1+2.csv"
    assert encode_key(key) == "2026/tx+day1%2B2.csv"
    assert decode_key(encode_key(key)) == key
    assert decode_key("2026%2Ftx+day1%2B2.csv") == key  # MinIO encodes the '/' too


def test_a_key_in_the_landing_bucket_is_a_file_inside_it(ctx: Context, buckets: Buckets) -> None:
    landed = ctx.paths.landing / "2026" / "day1.csv"
    landed.parent.mkdir()
    landed.write_text("id\n1\n")
    location = buckets.locate(LANDING_BUCKET, "2026/day1.csv")
    assert location.uri == landed.resolve().as_uri()
    assert buckets.local_file(location) == landed.resolve()


@pytest.mark.parametrize(
    ("raw_key", "message"),
    [
        ("../secret.csv", "has a '..' segment"),
        ("%2E%2E%2Fsecret.csv", "has a '..' segment"),  # decoded before it is checked
        ("/etc/passwd", "is absolute"),
    ],
)
def test_escaping_keys_are_refused_and_audited(
    ctx: Context, buckets: Buckets, raw_key: str, message: str
) -> None:
    (ctx.paths.home / "secret.csv").write_text("not for ingest\n")
    with pytest.raises(ObjectKeyError) as refused:
        buckets.locate(LANDING_BUCKET, decode_key(raw_key))
    text = str(refused.value)
    assert message in text and "expected a key relative to its bucket" in text
    assert refused.value.status == 422
    assert _refusals(ctx) == [text]


def test_a_symlink_out_of_the_bucket_is_refused(
    ctx: Context, buckets: Buckets, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.csv"
    outside.write_text("id\n1\n")
    (ctx.paths.landing / "link.csv").symlink_to(outside)
    (ctx.paths.landing / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    for key in ("link.csv", "linked-dir/outside.csv"):
        with pytest.raises(ObjectKeyError, match="outside the bucket's folder"):
            buckets.locate(LANDING_BUCKET, key)
    assert len(_refusals(ctx)) == 2


def test_a_symlink_inside_the_bucket_is_its_target(ctx: Context, buckets: Buckets) -> None:
    target = ctx.paths.landing / "day1.csv"
    target.write_text("id\n1\n")
    (ctx.paths.landing / "latest.csv").symlink_to(target)
    location = buckets.locate(LANDING_BUCKET, "latest.csv")
    assert location.uri.endswith("/landing/latest.csv")
    assert buckets.local_file(location) == target.resolve()


@pytest.mark.parametrize("bucket", ["", "..", "a/b", "a\\b"])
def test_bucket_names_that_are_not_one_name_are_refused(buckets: Buckets, bucket: str) -> None:
    with pytest.raises(ObjectKeyError, match="bucket name"):
        buckets.locate(bucket, "day1.csv")


def test_an_s3_bucket_is_checked_against_the_residency_policy(
    ctx: Context, buckets: Buckets
) -> None:
    location = buckets.locate("uae-bucket", "2026/day1.csv")
    assert (location.uri, location.path) == ("s3://uae-bucket/2026/day1.csv", None)
    with pytest.raises(StorageError, match=r"reads objects only from its local buckets \(landing"):
        buckets.local_file(location)
    with pytest.raises(ResidencyViolation, match="eu-west-1"):
        buckets.locate("eu-bucket", "day1.csv")
    # A name that starts like a declared bucket is another bucket, with no known region.
    with pytest.raises(ResidencyViolation, match="no known region"):
        buckets.locate("uae-bucket-copy", "day1.csv")
    refused = [e for e in ctx.audit.entries() if e["action"] == "policy.refused"]
    assert [e["resource"] for e in refused] == [
        "s3://eu-bucket/day1.csv",
        "s3://uae-bucket-copy/day1.csv",
    ]


def test_a_missing_local_object_says_so(ctx: Context, buckets: Buckets) -> None:
    location = buckets.locate(LANDING_BUCKET, "gone.csv")
    with pytest.raises(StorageError, match="does not exist or is not a file"):
        buckets.local_file(location)
