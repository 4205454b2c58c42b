"""The Ed25519 key that signs the daily exports, and its public half for auditors."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hoodrun.billing.ledger._errors import SigningKeyError
from hoodrun.config import Config

__all__ = [
    "default_signing_key_path",
    "key_fingerprint",
    "load_or_create_signing_key",
    "load_public_key",
    "load_signing_key",
    "public_key_pem",
]


def default_signing_key_path(config: Config) -> Path:
    """``billing.ledger.signing_key_file``, or ``data_dir/ledger-signing.pem``."""
    return config.billing.ledger.signing_key_file or config.data_dir / "ledger-signing.pem"


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path`` (PEM, unencrypted PKCS8)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SigningKeyError(f"no ledger signing key at {path}") from None
    except OSError as exc:
        raise SigningKeyError(
            f"cannot read the ledger signing key {path}: {exc.strerror}"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(
            f"{path} is not an unencrypted PEM private key ({exc}); move it away to get a new one"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"{path} holds a {type(key).__name__.removeprefix('_')}, not an Ed25519 key"
        )
    return key


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The key in ``path``; made once (mode 0600) if the file does not exist.

    The new key is written to a temporary file and linked into place, so two processes starting
    at once end up with the same, complete key.
    """
    if path.exists():
        return load_signing_key(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
    except OSError as exc:
        raise SigningKeyError(f"cannot write the ledger signing key {path}: {exc}") from None
    finally:
        temp.unlink(missing_ok=True)
    return load_signing_key(path)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file holding the public key (or the private key)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the public key {path}: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        return load_signing_key(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"{path} is not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} is not an Ed25519 public key")
    return key


def _public(key: Ed25519PrivateKey | Ed25519PublicKey) -> Ed25519PublicKey:
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as PEM (SubjectPublicKeyInfo), for auditors to verify exports offline."""
    return (
        _public(key)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def key_fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """SHA-256 (hex) of the raw 32-byte public key: which key signed an export."""
    raw = _public(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()
