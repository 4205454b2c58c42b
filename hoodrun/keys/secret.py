"""Key material: ``hr_`` + base58 of random bytes, stored only as base64(SHA-256(key)).

The hash is Unkey's scheme (standard base64 of the SHA-256 digest of the whole key string), so
keys can move between Unkey and HoodRun without being reissued.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

import base58

__all__ = ["KEY_PREFIX", "generate_key", "hash_key", "key_start", "looks_like_key"]

KEY_PREFIX = "hr_"
_RANDOM_BYTES = 20  # 160 bits; the brief's floor is 16 bytes
_B58 = frozenset("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


def generate_key() -> str:
    return KEY_PREFIX + base58.b58encode(secrets.token_bytes(_RANDOM_BYTES)).decode()


def hash_key(key: str) -> str:
    return base64.b64encode(hashlib.sha256(key.encode()).digest()).decode()


def key_start(key: str) -> str:
    """The first characters, safe to show in lists so a person can tell keys apart."""
    return key[: len(KEY_PREFIX) + 4]


def looks_like_key(value: str) -> bool:
    """Cheap shape check (length, alphabet) so junk never reaches the store."""
    body = value[len(KEY_PREFIX) :]
    return value.startswith(KEY_PREFIX) and 16 <= len(body) <= 64 and all(c in _B58 for c in body)
