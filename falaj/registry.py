"""The model registry: versioned, signed, encrypted model artifacts with lineage.

Layout under ``<home>/registry``::

    <model>/.lock                   serialises version numbering across processes
    <model>/<version>/model.onnx.enc       the ONNX bytes, envelope-encrypted
    <model>/<version>/model.int8.onnx.enc  optional: the int8 variant, encrypted alike
    <model>/<version>/profile.json         the reference profile (drift baseline)
    <model>/<version>/metadata.json        digests, metrics, lineage, feature names
    <model>/<version>/model.sig            signature over every file above

Every version has the ``fp32`` model; the training job adds the ``int8``
variant only where it was smaller, not slower and as accurate
(``training.quantize``). ``metadata.json`` lists the variants with the SHA-256
of each one's plaintext; metadata written before variants existed has no such
list and means fp32 alone.

A version is assembled in a staging directory and renamed into place only once
it is complete and signed, so a reader never sees half a version. Listing reads
metadata as it is; only ``load_verified`` hands out model bytes, and it checks
the signature before it decrypts anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx

from falaj.artifacts import ArtifactKeys, decrypt, encrypt, sign_directory, verify_directory
from falaj.audit import Outcome
from falaj.context import Context
from falaj.errors import ArtifactError, RegistryError
from falaj.profile import ReferenceProfile
from falaj.residency import Boundary

MODEL_FILE = "model.onnx.enc"
INT8_MODEL_FILE = "model.int8.onnx.enc"
#: The model as trained; every version has it.
FP32 = "fp32"
#: Weights quantised to int8 (onnxruntime dynamic quantisation); optional.
INT8 = "int8"
PROFILE_FILE = "profile.json"
METADATA_FILE = "metadata.json"
SIGNATURE_FILE = "model.sig"
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: int
    digest: str
    created: str
    region: str
    metrics: Mapping[str, float]
    lineage: Mapping[str, Any]
    feature_names: tuple[str, ...]
    location: str
    #: Variant name -> SHA-256 of its plaintext ONNX; ``fp32``'s is ``digest``.
    variants: Mapping[str, str]

    def to_json(self) -> dict[str, Any]:
        """The metadata file's content (the location is where the file is, not in it)."""
        return {
            "model": self.model,
            "version": self.version,
            "digest": self.digest,
            "created": self.created,
            "region": self.region,
            "metrics": dict(self.metrics),
            "lineage": dict(self.lineage),
            "feature_names": list(self.feature_names),
            "variants": dict(self.variants),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, location: str) -> ModelVersion:
        try:
            digest = str(data["digest"])
            # Absent in metadata written before variants existed: fp32 alone.
            variants = {str(k): str(v) for k, v in data.get("variants", {FP32: digest}).items()}
            if variants.get(FP32) != digest:
                raise ValueError(
                    f"variants: expected {FP32!r} with the version's digest {digest}, "
                    f"got {variants.get(FP32)!r}"
                )
            return cls(
                model=str(data["model"]),
                version=int(data["version"]),
                digest=digest,
                created=str(data["created"]),
                region=str(data["region"]),
                metrics={str(k): float(v) for k, v in data["metrics"].items()},
                lineage=dict(data["lineage"]),
                feature_names=tuple(str(n) for n in data["feature_names"]),
                location=location,
                variants=variants,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(
                f"the metadata at {location} is malformed ({type(exc).__name__}: {exc}); "
                "re-register the version"
            ) from None


@dataclass(frozen=True)
class VerifiedArtifact:
    """A version whose signature, encryption and digest all checked out."""

    version: ModelVersion
    #: The plaintext ONNX of ``variant``.
    onnx_bytes: bytes
    profile: ReferenceProfile
    variant: str = FP32


def registered_models(root: Path) -> list[str]:
    """The models with a version in the registry folder ``root``; it reads folder names only.

    Shell completion calls it: unlike ``ModelRegistry``, it creates no key.
    """
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _version_numbers(p))


class ModelRegistry:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.root = ctx.paths.registry
        self.keys = ArtifactKeys.load_or_create(ctx.paths.keys)

    # -- writing -----------------------------------------------------------

    def register(
        self,
        model: str,
        *,
        onnx_bytes: bytes,
        profile: ReferenceProfile,
        metrics: Mapping[str, float],
        lineage: Mapping[str, Any],
        feature_names: Sequence[str],
        int8_onnx_bytes: bytes | None = None,
    ) -> ModelVersion:
        """Store a new version (encrypted, signed) and return it; numbers start at 1.

        ``int8_onnx_bytes``, when given, is stored beside the model as its
        ``int8`` variant, under the same encryption and the same signature.
        """
        _check_model_name(model)
        models = {FP32: onnx_bytes}
        if int8_onnx_bytes is not None:
            models[INT8] = int8_onnx_bytes
        clean_metrics = _check_inputs(model, models, profile, metrics, lineage, feature_names)
        model_dir = self.root / model
        # Checked before a single byte is written: a refused write leaves nothing.
        self.ctx.policy.check_location(
            (model_dir / str(self._next_version(model_dir))).as_uri(),
            boundary=Boundary.STORAGE_WRITE,
        )
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = model_dir / f".staging-{uuid.uuid4().hex}"
        try:
            with self._model_lock(model_dir):
                version = self._next_version(model_dir)
                final = model_dir / str(version)
                entry = ModelVersion(
                    model=model,
                    version=version,
                    digest=hashlib.sha256(onnx_bytes).hexdigest(),
                    created=datetime.now(UTC).isoformat(),
                    region=self.ctx.settings.region,
                    metrics=clean_metrics,
                    lineage=dict(lineage),
                    feature_names=tuple(feature_names),
                    location=final.as_uri(),
                    variants={
                        name: hashlib.sha256(data).hexdigest() for name, data in models.items()
                    },
                )
                staging.mkdir()
                for name, data in models.items():
                    (staging / _variant_file(name)).write_bytes(
                        encrypt(data, self.keys.key_encryption_key())
                    )
                _write_json(staging / PROFILE_FILE, profile.to_json())
                _write_json(staging / METADATA_FILE, entry.to_json())
                sign_directory(staging, staging / SIGNATURE_FILE, self.keys)
                staging.rename(final)
        except OSError as exc:
            raise ArtifactError(
                f"cannot write a version of {model!r} under {model_dir}: {exc}"
            ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        resource = f"model/{model}/{version}"
        region = self.ctx.settings.region
        self.ctx.audit.record(
            "model.registered",
            actor=self.ctx.actor,
            resource=resource,
            region=region,
            details={
                "digest": entry.digest,
                "variants": sorted(entry.variants),
                "location": entry.location,
                "metrics": dict(entry.metrics),
                "lineage": dict(entry.lineage),
            },
        )
        self.ctx.audit.record(
            "model.signed",
            actor=self.ctx.actor,
            resource=resource,
            region=region,
            details={"signature": (final / SIGNATURE_FILE).as_uri(), "key": "ec-p256"},
        )
        return entry

    @contextlib.contextmanager
    def _model_lock(self, model_dir: Path) -> Iterator[None]:
        with open(model_dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    @staticmethod
    def _next_version(model_dir: Path) -> int:
        return max(_version_numbers(model_dir), default=0) + 1

    # -- reading -----------------------------------------------------------

    def models(self) -> list[str]:
        return registered_models(self.root)

    def versions(self, model: str) -> list[ModelVersion]:
        return [self._read(model, v) for v in _version_numbers(self._model_dir(model))]

    def latest(self, model: str) -> ModelVersion | None:
        numbers = _version_numbers(self._model_dir(model))
        return self._read(model, numbers[-1]) if numbers else None

    def get(self, model: str, version: int) -> ModelVersion:
        numbers = _version_numbers(self._model_dir(model))
        if version not in numbers:
            if not numbers:
                known = ", ".join(self.models()) or "none yet"
                raise RegistryError(
                    f"no model {model!r} in the registry at {self.root}; known models: {known}"
                )
            raise RegistryError(
                f"model {model!r} has no version {version}; known versions: "
                + ", ".join(str(n) for n in numbers)
            )
        return self._read(model, version)

    def load_verified(self, model: str, version: int, variant: str = FP32) -> VerifiedArtifact:
        """The plaintext ONNX of ``variant`` and the profile, only if everything checks out.

        Order matters: the signature (over every file, every variant included)
        is checked first, so no byte of an unverified file is parsed or decrypted.
        """
        _variant_file(variant)
        self.get(model, version)
        directory = self._model_dir(model) / str(version)
        try:
            verify_directory(directory, directory / SIGNATURE_FILE, self.keys)
            entry = self._read(model, version)
            if (entry.model, entry.version) != (model, version):
                # A correctly signed version copied into another slot.
                raise ArtifactError(
                    f"{directory} holds the signed metadata of {entry.model!r} version "
                    f"{entry.version}, expected {model!r} version {version}; it was moved"
                )
            expected = entry.variants.get(variant)
            if expected is None:
                raise RegistryError(
                    f"{model!r} version {version} has no {variant!r} variant; it has "
                    f"{', '.join(sorted(entry.variants))}. Load one of those, or leave the "
                    f"variant out for {FP32!r}"
                )
            onnx_bytes = decrypt(
                (directory / _variant_file(variant)).read_bytes(), self.keys.key_encryption_key()
            )
            digest = hashlib.sha256(onnx_bytes).hexdigest()
            if digest != expected:
                raise ArtifactError(
                    f"{model!r} version {version} ({variant}) decrypts to sha256 {digest}, but "
                    f"its metadata records {expected}; re-register it"
                )
            profile = ReferenceProfile.from_json(_read_json(directory / PROFILE_FILE))
        except ArtifactError as exc:
            self.ctx.audit.record(
                "model.refused",
                actor=self.ctx.actor,
                resource=f"model/{model}/{version}",
                region=self.ctx.settings.region,
                outcome=Outcome.REFUSED,
                details={"reason": str(exc), "error": type(exc).__name__},
            )
            raise
        except OSError as exc:
            raise ArtifactError(f"cannot read {directory}: {exc}") from exc
        return VerifiedArtifact(
            version=entry, onnx_bytes=onnx_bytes, profile=profile, variant=variant
        )

    def _model_dir(self, model: str) -> Path:
        if not _MODEL_NAME.match(model):
            raise RegistryError(
                f"no model {model!r}: model names are lower-case letters, digits, '-' and '_'"
            )
        return self.root / model

    def _read(self, model: str, version: int) -> ModelVersion:
        directory = self._model_dir(model) / str(version)
        return ModelVersion.from_json(
            _read_json(directory / METADATA_FILE), location=directory.as_uri()
        )


#: The file each variant's encrypted ONNX is kept in.
VARIANT_FILES = {FP32: MODEL_FILE, INT8: INT8_MODEL_FILE}


def _variant_file(variant: str) -> str:
    if variant not in VARIANT_FILES:
        raise RegistryError(
            f"no model variant {variant!r}: expected one of {', '.join(map(repr, VARIANT_FILES))}"
        )
    return VARIANT_FILES[variant]


def _version_numbers(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir())


def _check_model_name(model: str) -> None:
    if not _MODEL_NAME.match(model):
        raise ArtifactError(
            f"model name {model!r} is not allowed: expected lower-case letters, digits, "
            "'-' and '_', starting with a letter or digit, at most 63 characters (e.g. 'fraud')"
        )


def _check_inputs(
    model: str,
    models: Mapping[str, bytes],
    profile: ReferenceProfile,
    metrics: Mapping[str, float],
    lineage: Mapping[str, Any],
    feature_names: Sequence[str],
) -> dict[str, float]:
    """Collect every problem with a registration into one error."""
    problems: list[str] = []
    for variant, onnx_bytes in models.items():
        argument = "onnx_bytes" if variant == FP32 else f"{variant}_onnx_bytes"
        try:
            onnx.checker.check_model(onnx.load_model_from_string(onnx_bytes))
        except Exception as exc:  # onnx raises protobuf and checker errors alike
            problems.append(f"{argument}: not a valid ONNX model ({type(exc).__name__})")
    clean: dict[str, float] = {}
    for name, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            problems.append(f"metrics.{name}: expected a finite number, got {value!r}")
        clean[str(name)] = number
    try:
        json.dumps(dict(lineage), allow_nan=False)
    except (TypeError, ValueError) as exc:
        problems.append(f"lineage: expected JSON-serialisable values ({exc})")
    if not feature_names or isinstance(feature_names, str):
        problems.append(f"feature_names: expected a non-empty list of names, got {feature_names!r}")
    missing = sorted(set(profile.features) - set(feature_names))
    if missing:
        problems.append(f"profile: profiles features that are not model features: {missing}")
    if problems:
        raise ArtifactError(f"cannot register {model!r}: " + "; ".join(problems))
    return clean


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError:
        raise ArtifactError(f"{path} is not JSON; re-register the version") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
