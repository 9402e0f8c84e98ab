"""Encryption at rest (SPEC §11): the one module that knows Fernet.

`ENCRYPTION_KEYS` is a comma-separated list of Fernet keys: the first encrypts, every one decrypts
(`MultiFernet`), so a key is rotated by putting a new one first, running
`python -m app.cli rotate-encryption-key` (re-encrypts every stored secret with it) and only then
removing the old one.

A stored value is a Fernet token, recognised by its prefix (`gAAAAA`: version byte 0x80 and a
timestamp below 2**32). A value without it is legacy plaintext written before encryption (migration
0017): read as is, and encrypted by the rotation command.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

ENCRYPTED_MARKER = "gAAAAA"
_MARKER_BYTES = ENCRYPTED_MARKER.encode()
GENERATE_HINT = (
    "generate one with: python -c "
    "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)


class SecretUnreadable(Exception):
    """A stored token none of ENCRYPTION_KEYS decrypts (a key removed before the rotation ran)."""


def parse_keys(value: str) -> list[str]:
    """The keys of an ENCRYPTION_KEYS value, each checked; ValueError names the bad one."""
    keys = [key.strip() for key in value.split(",") if key.strip()]
    for number, key in enumerate(keys, 1):
        try:
            Fernet(key)
        except ValueError:
            raise ValueError(
                f"key {number} is not a Fernet key (32 url-safe base64 bytes); {GENERATE_HINT}"
            ) from None
    return keys


def development_key(seed: str) -> str:
    """A stable key derived from `seed` (the admin key): development and test only, when
    ENCRYPTION_KEYS is unset (staging and production refuse to start without it)."""
    digest = hashlib.sha256(b"vca-development-encryption-key:" + seed.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()


@lru_cache(maxsize=1)
def _fernet() -> MultiFernet:
    from app.config.settings import settings

    return MultiFernet([Fernet(key) for key in settings.encryption_keys])


def reset_keys() -> None:
    """Forget the keys read from the settings (tests that change them)."""
    _fernet.cache_clear()


def is_encrypted(stored: str | bytes) -> bool:
    if isinstance(stored, bytes):
        return stored.startswith(_MARKER_BYTES)
    return stored.startswith(ENCRYPTED_MARKER)


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(stored: str) -> str:
    """The plaintext of a stored value (legacy plaintext is returned as it is)."""
    if not is_encrypted(stored):
        return stored
    try:
        return _fernet().decrypt(stored.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable("no key of ENCRYPTION_KEYS decrypts the stored value") from None


def reencrypt(stored: str) -> str:
    """The value encrypted with the first key (legacy plaintext is encrypted)."""
    if not is_encrypted(stored):
        return encrypt(stored)
    try:
        return _fernet().rotate(stored.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable("no key of ENCRYPTION_KEYS decrypts the stored value") from None


def encrypt_bytes(plaintext: bytes) -> bytes:
    return _fernet().encrypt(plaintext)


def decrypt_bytes(stored: bytes) -> bytes:
    """As `decrypt`, for bytes (a stored response body); legacy plaintext returned as it is."""
    if not is_encrypted(stored):
        return stored
    try:
        return _fernet().decrypt(stored)
    except InvalidToken:
        raise SecretUnreadable("no key of ENCRYPTION_KEYS decrypts the stored value") from None
