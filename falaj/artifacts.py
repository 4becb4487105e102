"""Artifact security: keys, envelope encryption at rest, and directory signatures.

A model version is encrypted with a fresh AES-256-GCM data key, and that data
key is wrapped (RFC 3394 AES key wrap) by the platform's key-encryption key
(KEK), so rotating the KEK means rewrapping 40 bytes per version rather than
re-encrypting models. The envelope layout, all of it bound into the GCM tag as
associated data except the ciphertext itself::

    b"FLJE" | version (1 byte) | wrapped data key (40 bytes) | nonce (12 bytes) | ciphertext+tag

Every file of a version directory is signed with OpenSSF model signing
(``model-signing`` 1.1.1, an EC P-256 key, offline): the signature holds the
SHA-256 of every file, so an edited, added or removed file is refused.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from model_signing import hashing, signing, verifying

from falaj.errors import ArtifactError, SignatureInvalid

MAGIC = b"FLJE"
ENVELOPE_VERSION = 1
KEK_BYTES = 32
_WRAPPED_KEY_BYTES = 40  # a 32-byte key wrapped by RFC 3394 gains one 8-byte block
_NONCE_BYTES = 12
_HEADER_BYTES = len(MAGIC) + 1 + _WRAPPED_KEY_BYTES + _NONCE_BYTES
_TAG_BYTES = 16


@dataclass(frozen=True)
class ArtifactKeys:
    """Where the signing key pair and the key-encryption key of a platform live."""

    signing_key_path: Path
    verify_key_path: Path
    key_encryption_key_path: Path

    @classmethod
    def load_or_create(cls, keys_dir: Path) -> ArtifactKeys:
        """The keys under ``keys_dir``, created on first use (private files 0600).

        Several processes may start at once; an advisory lock makes exactly one
        of them create the keys, and the others then read the same ones.
        """
        keys = cls(
            signing_key_path=keys_dir / "artifact-signing.pem",
            verify_key_path=keys_dir / "artifact-verify.pem",
            key_encryption_key_path=keys_dir / "artifact-kek.bin",
        )
        paths = (keys.signing_key_path, keys.verify_key_path, keys.key_encryption_key_path)
        if all(path.exists() for path in paths):
            return keys
        try:
            keys_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(keys_dir, 0o700)
            with open(keys_dir / ".artifact-keys.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                present = [path.exists() for path in paths]
                if all(present):
                    return keys
                if any(present):
                    # Half a key set would sign with one key and verify with
                    # another; refusing is better than silently replacing keys.
                    missing = ", ".join(
                        p.name for p, ok in zip(paths, present, strict=True) if not ok
                    )
                    raise ArtifactError(
                        f"the artifact keys in {keys_dir} are incomplete (missing {missing}); "
                        "restore them from backup, or remove all three to start with new keys "
                        "(existing model versions will then no longer verify)"
                    )
                keys._create()
        except OSError as exc:
            raise ArtifactError(f"cannot create the artifact keys in {keys_dir}: {exc}") from exc
        return keys

    def _create(self) -> None:
        private = ec.generate_private_key(ec.SECP256R1())
        _write_new(
            self.signing_key_path,
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            mode=0o600,
        )
        _write_new(
            self.verify_key_path,
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            mode=0o644,
        )
        _write_new(self.key_encryption_key_path, secrets.token_bytes(KEK_BYTES), mode=0o600)

    def key_encryption_key(self) -> bytes:
        """The 32-byte KEK; never log it."""
        try:
            kek = self.key_encryption_key_path.read_bytes()
        except OSError as exc:
            raise ArtifactError(
                f"cannot read the key-encryption key at {self.key_encryption_key_path}: "
                f"{exc.strerror}"
            ) from exc
        if len(kek) != KEK_BYTES:
            raise ArtifactError(
                f"the key-encryption key at {self.key_encryption_key_path} has {len(kek)} bytes, "
                f"expected {KEK_BYTES}; restore it from backup"
            )
        return kek


def _write_new(path: Path, data: bytes, *, mode: int) -> None:
    # O_EXCL: never overwrite a key; the mode is set at creation, so a private
    # key is never readable by others, even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def encrypt(plaintext: bytes, kek: bytes) -> bytes:
    """Seal ``plaintext`` in a versioned envelope under a fresh data key."""
    _check_kek(kek)
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = secrets.token_bytes(_NONCE_BYTES)
    header = MAGIC + bytes([ENVELOPE_VERSION]) + aes_key_wrap(kek, data_key) + nonce
    return header + AESGCM(data_key).encrypt(nonce, plaintext, header)


def decrypt(envelope: bytes, kek: bytes) -> bytes:
    """Open an envelope made by ``encrypt``; refuse a wrong key or any changed byte."""
    _check_kek(kek)
    if len(envelope) < _HEADER_BYTES + _TAG_BYTES or not envelope.startswith(MAGIC):
        raise ArtifactError(
            f"not a Falaj encrypted artifact: expected {_HEADER_BYTES + _TAG_BYTES}+ bytes "
            f"starting with {MAGIC!r}, got {len(envelope)} bytes starting with {envelope[:4]!r}"
        )
    version = envelope[len(MAGIC)]
    if version != ENVELOPE_VERSION:
        raise ArtifactError(
            f"encrypted artifact has envelope version {version}, this Falaj reads version "
            f"{ENVELOPE_VERSION}; upgrade Falaj or re-register the model"
        )
    wrapped_start = len(MAGIC) + 1
    wrapped = envelope[wrapped_start : wrapped_start + _WRAPPED_KEY_BYTES]
    nonce = envelope[wrapped_start + _WRAPPED_KEY_BYTES : _HEADER_BYTES]
    header, ciphertext = envelope[:_HEADER_BYTES], envelope[_HEADER_BYTES:]
    try:
        data_key = aes_key_unwrap(kek, wrapped)
    except InvalidUnwrap:
        raise ArtifactError(
            "cannot unwrap the artifact's data key: it was encrypted under a different "
            "key-encryption key, or its header is corrupt"
        ) from None
    try:
        return AESGCM(data_key).decrypt(nonce, ciphertext, header)
    except InvalidTag:
        raise ArtifactError(
            "the encrypted artifact failed its integrity check (AES-GCM tag): "
            "its bytes were changed after encryption"
        ) from None


def _check_kek(kek: bytes) -> None:
    if len(kek) != KEK_BYTES:
        raise ArtifactError(f"a key-encryption key has {KEK_BYTES} bytes, got {len(kek)}")


def sign_directory(directory: Path, signature_path: Path, keys: ArtifactKeys) -> None:
    """Sign the digest of every file in ``directory`` into ``signature_path``.

    The signature file may live inside the directory; it is then left out of
    what is signed (by its relative path, so the directory can be renamed).
    """
    config = hashing.Config().set_ignored_paths(
        paths=_inner_paths(directory, signature_path), ignore_git_paths=False
    )
    try:
        signing.Config().use_elliptic_key_signer(
            private_key=keys.signing_key_path
        ).set_hashing_config(config).sign(directory, signature_path)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot sign {directory}: {exc}") from exc


def verify_directory(directory: Path, signature_path: Path, keys: ArtifactKeys) -> None:
    """Refuse ``directory`` unless every file matches the signature made by our key."""
    if not signature_path.is_file():
        raise SignatureInvalid(
            f"{directory} is unsigned: no signature at {signature_path}; "
            "only versions registered through the model registry can be loaded"
        )
    try:
        verifying.Config().use_elliptic_key_verifier(public_key=keys.verify_key_path).verify(
            directory, signature_path
        )
    except Exception as exc:  # model-signing raises many types; verification fails closed.
        raise SignatureInvalid(
            f"signature check of {directory} failed: {_describe(exc)}; the artifact was "
            "changed after signing or signed with another key — re-register it"
        ) from exc


def _inner_paths(directory: Path, path: Path) -> list[str]:
    try:
        return [str(path.resolve().relative_to(directory.resolve()))]
    except ValueError:
        return []


def _describe(exc: Exception) -> str:
    message = str(exc)
    # model-signing prints both digests as Python bytes reprs; the file names
    # are what a reader needs.
    mismatched = re.findall(r"Hash mismatch for '([^']+)'", message)
    if mismatched:
        rest = re.findall(r"(Extra files found[^\"\]]*|Missing files[^\"\]]*)", message)
        return "; ".join([f"hash mismatch for {', '.join(mismatched)}", *rest])
    if isinstance(exc, ValueError) and not message.startswith(("Signature", "Key")):
        return f"the signature file is not a valid signature bundle ({type(exc).__name__})"
    return message.strip() or type(exc).__name__
