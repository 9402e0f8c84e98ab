"""API key format, hashing and comparison."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_PREFIX = "vca"
_PREFIX_LENGTH = 8
_SECRET_BYTES = 32  # token_urlsafe(32) gives 43 characters


@dataclass(frozen=True)
class GeneratedKey:
    plaintext: str
    prefix: str
    key_hash: str


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def generate_api_key() -> GeneratedKey:
    """A new `vca_<8-char prefix>_<43 url-safe chars>` key; only its prefix and hash are stored."""
    prefix = secrets.token_hex(_PREFIX_LENGTH // 2)
    plaintext = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    return GeneratedKey(plaintext=plaintext, prefix=prefix, key_hash=hash_key(plaintext))


def parse_prefix(presented: str) -> str | None:
    """The lookup prefix of a presented key, or None when it is not shaped like one of ours."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != _PREFIX_LENGTH:
        return None
    if len(parts[2]) < 32:
        return None
    return parts[1]


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
