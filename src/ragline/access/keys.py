"""API keys: ``rl-<key id>_<secret>``, random, shown once, stored as a SHA-256 hash.

The key id (12 characters, not secret) names the key in listings, logs, spend and revocation;
the secret is 43 characters of [A-Za-z0-9] (256 bits). A key that high in entropy needs no slow
password hash: SHA-256 of the whole key is stored, and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string

PREFIX = "rl-"
_ID_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits
ID_LENGTH = 12
SECRET_LENGTH = 43
KEY_LENGTH = len(PREFIX) + ID_LENGTH + 1 + SECRET_LENGTH
_KEY = re.compile(rf"rl-([a-z0-9]{{{ID_LENGTH}}})_[A-Za-z0-9]{{{SECRET_LENGTH}}}")
MAX_PRESENTED = 512
"""Longer credentials are refused before anything is computed from them."""


def generate_key() -> tuple[str, str]:
    """A new key and its id: ``(key, key_id)``."""
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_LENGTH))
    return f"{PREFIX}{key_id}_{secret}", key_id


def key_id_of(presented: str) -> str | None:
    """The key id of a well-formed key, or None (never raises, whatever the input)."""
    if len(presented) != KEY_LENGTH:
        return None
    m = _KEY.fullmatch(presented)
    return m.group(1) if m else None


def id_from(text: str) -> str:
    """A key id from an id, its display form ``rl-<id>_…`` or the whole key (what admins type)."""
    t = text.strip()
    if t.startswith(PREFIX):
        t = t[len(PREFIX) :]
    return t.split("_", 1)[0]


def hash_key(presented: str) -> str:
    """Hex SHA-256 of a key (what the store keeps)."""
    return hashlib.sha256(presented.encode("utf-8", "surrogatepass")).hexdigest()


def matches(presented_hash: str, stored_hash: str) -> bool:
    """Constant-time comparison of two key hashes."""
    return hmac.compare_digest(presented_hash.encode("ascii"), stored_hash.encode("ascii"))


def display(key_id: str) -> str:
    """How a key is shown after creation: its id, never its secret."""
    return f"{PREFIX}{key_id}_…"
