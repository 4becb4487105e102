"""The model registry: versions, signatures, encryption at rest, residency, audit."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from falaj.artifacts import sign_directory
from falaj.context import Context
from falaj.errors import ArtifactError, RegistryError, ResidencyViolation, SignatureInvalid
from falaj.profile import ReferenceProfile
from falaj.registry import (
    FP32,
    INT8,
    INT8_MODEL_FILE,
    METADATA_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    ModelRegistry,
)
from falaj.settings import Settings

FEATURES = ("amount", "hour")


def tiny_onnx(weights: tuple[float, ...] = (0.5, -0.25)) -> bytes:
    """A logistic regression over FEATURES: sigmoid(x @ w)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [len(weights), 1], list(weights))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Sigmoid", ["z"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, len(weights)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def profile() -> ReferenceProfile:
    rng = np.random.default_rng(1)
    return ReferenceProfile.from_columns(
        {"amount": rng.lognormal(size=500), "hour": rng.integers(0, 24, 500).astype(float)},
        predictions=rng.random(500),
    )


def register(registry: ModelRegistry, onnx_bytes: bytes | None = None, **lineage: object) -> int:
    entry = registry.register(
        "fraud",
        onnx_bytes=onnx_bytes or tiny_onnx(),
        profile=profile(),
        metrics={"auc": 0.91, "loss": 0.3},
        lineage={"training_job_id": "job-1", "reason": "manual", **lineage},
        feature_names=FEATURES,
    )
    return entry.version


def test_register_get_and_load_verified(ctx: Context) -> None:
    registry = ModelRegistry(ctx)
    onnx_bytes = tiny_onnx()
    entry = registry.register(
        "fraud",
        onnx_bytes=onnx_bytes,
        profile=profile(),
        metrics={"auc": 0.91},
        lineage={"training_job_id": "job-1", "parent_version": None, "code_version": "abc"},
        feature_names=FEATURES,
    )
    assert entry.version == 1
    assert entry.digest == hashlib.sha256(onnx_bytes).hexdigest()
    assert entry.region == ctx.settings.region
    assert entry.location == (ctx.paths.registry / "fraud" / "1").as_uri()
    assert registry.get("fraud", 1) == entry
    assert registry.latest("fraud") == entry
    assert registry.models() == ["fraud"]

    version_dir = ctx.paths.registry / "fraud" / "1"
    # At rest the model is ciphertext only.
    assert onnx_bytes not in (version_dir / MODEL_FILE).read_bytes()
    assert (version_dir / SIGNATURE_FILE).is_file()

    artifact = registry.load_verified("fraud", 1)
    assert artifact.onnx_bytes == onnx_bytes
    assert artifact.profile == profile()
    assert artifact.version == entry
    # The bytes handed out are a model onnxruntime runs.
    session = ort.InferenceSession(artifact.onnx_bytes, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": np.array([[0.0, 0.0]], dtype=np.float32)})
    assert float(out[0, 0]) == pytest.approx(0.5)

    actions = [(e["action"], e["resource"], e["actor"]) for e in ctx.audit.entries()]
    assert ("model.registered", "model/fraud/1", "test") in actions
    assert ("model.signed", "model/fraud/1", "test") in actions
    ctx.audit.verify()


def test_versions_are_numbered_in_order(ctx: Context) -> None:
    registry = ModelRegistry(ctx)
    assert registry.latest("fraud") is None
    assert [register(registry), register(registry, parent_version=1)] == [1, 2]
    assert [v.version for v in registry.versions("fraud")] == [1, 2]
    latest = registry.latest("fraud")
    assert latest is not None and latest.lineage["parent_version"] == 1


def _register_in_child(home: str, weight: float) -> None:
    ctx = Context.create(Settings(home=Path(home)), actor="child")
    register(ModelRegistry(ctx), tiny_onnx((weight, weight)))


def test_concurrent_registrations_get_distinct_versions(ctx: Context) -> None:
    spawn = multiprocessing.get_context("fork")
    children = [
        spawn.Process(target=_register_in_child, args=(str(ctx.settings.home), float(i)))
        for i in range(3)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    registry = ModelRegistry(ctx)
    versions = registry.versions("fraud")
    assert [v.version for v in versions] == [1, 2, 3]
    assert len({v.digest for v in versions}) == 3
    for version in versions:
        registry.load_verified("fraud", version.version)


def test_unknown_model_or_version_names_what_is_known(ctx: Context) -> None:
    registry = ModelRegistry(ctx)
    register(registry)
    with pytest.raises(RegistryError, match="known versions: 1"):
        registry.get("fraud", 7)
    with pytest.raises(RegistryError, match="known models: fraud"):
        registry.load_verified("churn", 1)
    with pytest.raises(RegistryError, match="lower-case"):
        registry.get("../etc", 1)


def test_tampered_model_is_refused_and_audited(ctx: Context) -> None:
    registry = ModelRegistry(ctx)
    register(registry)
    encrypted = ctx.paths.registry / "fraud" / "1" / MODEL_FILE
    data = bytearray(encrypted.read_bytes())
    data[-5] ^= 0x01
    encrypted.write_bytes(bytes(data))
    with pytest.raises(SignatureInvalid, match=r"model\.onnx\.enc"):
        registry.load_verified("fraud", 1)
    refused = [e for e in ctx.audit.entries() if e["action"] == "model.refused"]
    assert refused and refused[-1]["outcome"] == "refused"
    assert refused[-1]["resource"] == "model/fraud/1"


def test_tampered_metadata_is_refused(ctx: Context) -> None:
    registry = ModelRegistry(ctx)
    register(registry)
    metadata = ctx.paths.registry / "fraud" / "1" / "metadata.json"
    data = json.loads(metadata.read_text())
    data["metrics"]["auc"] = 0.99
    metadata.write_text(json.dumps(data))
    with pytest.raises(SignatureInvalid, match=r"metadata\.json"):
        registry.load_verified("fraud", 1)


def test_version_copied_into_another_slot_is_refused(ctx: Context) -> None:
    registry = ModelRegistry(ctx)
    register(registry)
    register(registry)
    model_dir = ctx.paths.registry / "fraud"
    (model_dir / "2").rename(model_dir / "old2")
    (model_dir / "1").rename(model_dir / "2")
    with pytest.raises(ArtifactError, match="expected 'fraud' version 2"):
        registry.load_verified("fraud", 2)


def test_model_encrypted_under_another_key_is_refused(ctx: Context, tmp_path: Path) -> None:
    registry = ModelRegistry(ctx)
    register(registry)
    # Same signing key, different KEK: the signature verifies, decryption must not.
    registry.keys.key_encryption_key_path.chmod(0o600)
    registry.keys.key_encryption_key_path.write_bytes(b"\x01" * 32)
    with pytest.raises(ArtifactError, match="different key-encryption key"):
        registry.load_verified("fraud", 1)


def test_out_of_region_registry_is_refused_before_writing(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / ".falaj", region="eu-west-1")
    ctx = Context.create(settings, actor="test")
    with pytest.raises(ResidencyViolation, match="eu-west-1"):
        register(ModelRegistry(ctx))
    assert not (ctx.paths.registry / "fraud").exists()
    refused = [e for e in ctx.audit.entries() if e["action"] == "policy.refused"]
    assert len(refused) == 1
    assert refused[0]["region"] == "eu-west-1"
    assert refused[0]["resource"].startswith((ctx.paths.registry / "fraud").as_uri())
    assert not any(e["action"] == "model.registered" for e in ctx.audit.entries())


def test_bad_registrations_are_refused_with_every_problem(ctx: Context) -> None:
    registry = ModelRegistry(ctx)
    with pytest.raises(ArtifactError) as refused:
        registry.register(
            "fraud",
            onnx_bytes=b"not onnx",
            profile=profile(),
            metrics={"auc": float("nan")},
            lineage={"job": object()},
            feature_names=("amount",),
        )
    message = str(refused.value)
    for problem in ("onnx_bytes", "metrics.auc", "lineage", "hour"):
        assert problem in message
    with pytest.raises(ArtifactError, match="not allowed"):
        registry.register(
            "Fraud/x",
            onnx_bytes=tiny_onnx(),
            profile=profile(),
            metrics={},
            lineage={},
            feature_names=FEATURES,
        )
    assert registry.models() == []


def register_with_int8(registry: ModelRegistry) -> tuple[bytes, bytes]:
    """A version with an int8 variant; any valid ONNX stands in for the quantised graph."""
    fp32, int8 = tiny_onnx(), tiny_onnx((0.5, -0.5))
    registry.register(
        "fraud",
        onnx_bytes=fp32,
        profile=profile(),
        metrics={"auc": 0.91},
        lineage={"training_job_id": "job-1"},
        feature_names=FEATURES,
        int8_onnx_bytes=int8,
    )
    return fp32, int8


def test_an_int8_variant_is_stored_encrypted_and_loaded_by_name(ctx: Context) -> None:
    registry = ModelRegistry(ctx)
    fp32, int8 = register_with_int8(registry)
    entry = registry.get("fraud", 1)
    assert entry.variants == {
        FP32: hashlib.sha256(fp32).hexdigest(),
        INT8: hashlib.sha256(int8).hexdigest(),
    }
    assert entry.digest == entry.variants[FP32]
    assert int8 not in (ctx.paths.registry / "fraud" / "1" / INT8_MODEL_FILE).read_bytes()

    loaded = registry.load_verified("fraud", 1, variant=INT8)
    assert (loaded.variant, loaded.onnx_bytes) == (INT8, int8)
    assert loaded.profile == profile()
    default = registry.load_verified("fraud", 1)
    assert (default.variant, default.onnx_bytes) == (FP32, fp32)
    registered = [e for e in ctx.audit.entries() if e["action"] == "model.registered"]
    assert registered[-1]["details"]["variants"] == [FP32, INT8]


def test_a_missing_or_unknown_variant_is_refused_with_what_exists(ctx: Context) -> None:
    registry = ModelRegistry(ctx)
    register(registry)
    assert registry.get("fraud", 1).variants.keys() == {FP32}
    assert not (ctx.paths.registry / "fraud" / "1" / INT8_MODEL_FILE).exists()
    with pytest.raises(RegistryError, match="has no 'int8' variant; it has fp32"):
        registry.load_verified("fraud", 1, variant=INT8)
    with pytest.raises(RegistryError, match="no model variant 'fp16'"):
        registry.load_verified("fraud", 1, variant="fp16")


@pytest.mark.parametrize("variant", [FP32, INT8])
def test_a_flipped_byte_in_the_int8_file_fails_verification(ctx: Context, variant: str) -> None:
    registry = ModelRegistry(ctx)
    register_with_int8(registry)
    encrypted = ctx.paths.registry / "fraud" / "1" / INT8_MODEL_FILE
    data = bytearray(encrypted.read_bytes())
    data[len(data) // 2] ^= 0x01
    encrypted.write_bytes(bytes(data))
    # One signature covers the directory: a tampered variant refuses the whole version.
    with pytest.raises(SignatureInvalid, match=r"model\.int8\.onnx\.enc"):
        registry.load_verified("fraud", 1, variant=variant)
    refused = [e for e in ctx.audit.entries() if e["action"] == "model.refused"]
    assert refused and refused[-1]["resource"] == "model/fraud/1"


def test_metadata_written_before_variants_loads_as_fp32_alone(ctx: Context) -> None:
    registry = ModelRegistry(ctx)
    onnx_bytes = tiny_onnx()
    register(registry, onnx_bytes)
    # Rewrite the version as the registry wrote it before variants existed, signed.
    directory = ctx.paths.registry / "fraud" / "1"
    metadata = json.loads((directory / METADATA_FILE).read_text())
    del metadata["variants"]
    (directory / METADATA_FILE).write_text(json.dumps(metadata))
    sign_directory(directory, directory / SIGNATURE_FILE, registry.keys)

    entry = registry.get("fraud", 1)
    assert entry.variants == {FP32: hashlib.sha256(onnx_bytes).hexdigest()}
    assert registry.load_verified("fraud", 1).onnx_bytes == onnx_bytes
    with pytest.raises(RegistryError, match="no 'int8' variant"):
        registry.load_verified("fraud", 1, variant=INT8)


def test_metadata_whose_variants_disagree_with_its_digest_is_malformed(ctx: Context) -> None:
    registry = ModelRegistry(ctx)
    register(registry)
    directory = ctx.paths.registry / "fraud" / "1"
    metadata = json.loads((directory / METADATA_FILE).read_text())
    metadata["variants"][FP32] = "0" * 64
    (directory / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(ArtifactError, match=r"malformed.*variants"):
        registry.get("fraud", 1)


def test_an_invalid_int8_variant_is_refused_before_writing(ctx: Context) -> None:
    registry = ModelRegistry(ctx)
    with pytest.raises(ArtifactError, match="int8_onnx_bytes: not a valid ONNX model"):
        registry.register(
            "fraud",
            onnx_bytes=tiny_onnx(),
            profile=profile(),
            metrics={},
            lineage={},
            feature_names=FEATURES,
            int8_onnx_bytes=b"not onnx",
        )
    assert registry.models() == []
