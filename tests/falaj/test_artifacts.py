"""Envelope encryption and directory signatures, with the real cryptography and model-signing."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from falaj.artifacts import ArtifactKeys, decrypt, encrypt, sign_directory, verify_directory
from falaj.errors import ArtifactError, SignatureInvalid


@pytest.fixture
def keys(tmp_path: Path) -> ArtifactKeys:
    return ArtifactKeys.load_or_create(tmp_path / "keys")


@pytest.fixture
def signed_dir(tmp_path: Path, keys: ArtifactKeys) -> Path:
    directory = tmp_path / "artifact"
    directory.mkdir()
    (directory / "model.bin").write_bytes(bytes(range(256)) * 64)
    (directory / "metadata.json").write_text('{"version": 1}')
    sign_directory(directory, directory / "model.sig", keys)
    return directory


def test_keys_are_created_once_with_private_files_0600(tmp_path: Path) -> None:
    first = ArtifactKeys.load_or_create(tmp_path / "keys")
    kek = first.key_encryption_key()
    pem = first.signing_key_path.read_bytes()
    again = ArtifactKeys.load_or_create(tmp_path / "keys")
    assert again == first
    assert again.key_encryption_key() == kek
    assert again.signing_key_path.read_bytes() == pem
    assert len(kek) == 32
    for private in (first.signing_key_path, first.key_encryption_key_path):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in pem and b"PUBLIC KEY" in first.verify_key_path.read_bytes()


def test_incomplete_key_set_is_refused_not_replaced(tmp_path: Path) -> None:
    keys = ArtifactKeys.load_or_create(tmp_path / "keys")
    keys.verify_key_path.unlink()
    with pytest.raises(ArtifactError, match="incomplete"):
        ArtifactKeys.load_or_create(tmp_path / "keys")
    assert keys.signing_key_path.exists()


def test_encrypt_decrypt_roundtrip_uses_a_fresh_data_key(keys: ArtifactKeys) -> None:
    kek = keys.key_encryption_key()
    plaintext = b"onnx model bytes " * 1000
    first, second = encrypt(plaintext, kek), encrypt(plaintext, kek)
    assert plaintext not in first
    assert first != second  # fresh data key and nonce every time
    assert decrypt(first, kek) == plaintext
    assert decrypt(second, kek) == plaintext
    assert decrypt(encrypt(b"", kek), kek) == b""


def test_wrong_key_is_refused(keys: ArtifactKeys, tmp_path: Path) -> None:
    envelope = encrypt(b"secret model", keys.key_encryption_key())
    other = ArtifactKeys.load_or_create(tmp_path / "other-keys").key_encryption_key()
    with pytest.raises(ArtifactError, match="different key-encryption key"):
        decrypt(envelope, other)


@pytest.mark.parametrize("offset", [-1, -20, 5, 50, 60])
def test_any_changed_byte_is_refused(keys: ArtifactKeys, offset: int) -> None:
    kek = keys.key_encryption_key()
    envelope = bytearray(encrypt(b"secret model" * 10, kek))
    envelope[offset] ^= 0x01
    with pytest.raises(ArtifactError):
        decrypt(bytes(envelope), kek)


def test_not_an_envelope_is_refused_with_what_was_found(keys: ArtifactKeys) -> None:
    with pytest.raises(ArtifactError, match="not a Falaj encrypted artifact"):
        decrypt(b"\x08\x07onnx-plaintext" * 10, keys.key_encryption_key())
    with pytest.raises(ArtifactError, match="32 bytes"):
        encrypt(b"x", b"short")


def test_unknown_envelope_version_is_refused(keys: ArtifactKeys) -> None:
    envelope = bytearray(encrypt(b"m", keys.key_encryption_key()))
    envelope[4] = 9
    with pytest.raises(ArtifactError, match="envelope version 9"):
        decrypt(bytes(envelope), keys.key_encryption_key())


def test_signed_directory_verifies_after_a_move(signed_dir: Path, keys: ArtifactKeys) -> None:
    verify_directory(signed_dir, signed_dir / "model.sig", keys)
    moved = signed_dir.rename(signed_dir.with_name("moved"))
    verify_directory(moved, moved / "model.sig", keys)


def test_a_flipped_byte_is_refused_naming_the_file(signed_dir: Path, keys: ArtifactKeys) -> None:
    data = bytearray((signed_dir / "model.bin").read_bytes())
    data[100] ^= 0xFF
    (signed_dir / "model.bin").write_bytes(bytes(data))
    with pytest.raises(SignatureInvalid, match=r"hash mismatch for model\.bin"):
        verify_directory(signed_dir, signed_dir / "model.sig", keys)


def test_an_added_file_is_refused(signed_dir: Path, keys: ArtifactKeys) -> None:
    (signed_dir / "extra.py").write_text("import os")
    with pytest.raises(SignatureInvalid, match="Extra files"):
        verify_directory(signed_dir, signed_dir / "model.sig", keys)


def test_missing_signature_is_refused(signed_dir: Path, keys: ArtifactKeys) -> None:
    (signed_dir / "model.sig").unlink()
    with pytest.raises(SignatureInvalid, match="unsigned"):
        verify_directory(signed_dir, signed_dir / "model.sig", keys)


def test_garbage_signature_is_refused(signed_dir: Path, keys: ArtifactKeys) -> None:
    (signed_dir / "model.sig").write_text("not a bundle")
    with pytest.raises(SignatureInvalid, match="not a valid signature bundle"):
        verify_directory(signed_dir, signed_dir / "model.sig", keys)


def test_another_key_is_refused(signed_dir: Path, tmp_path: Path) -> None:
    stranger = ArtifactKeys.load_or_create(tmp_path / "stranger")
    with pytest.raises(SignatureInvalid, match="Key mismatch"):
        verify_directory(signed_dir, signed_dir / "model.sig", stranger)
