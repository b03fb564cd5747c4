"""Per-machine API keys: `pp_<prefix>_<secret>`, shown once, stored as prefix + SHA-256.

A fast hash is right here (unlike passwords): the secret is 256 random bits, so there is
nothing to brute-force, and devices may authenticate thousands of times a second.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX_BYTES = 4


def new_api_key() -> tuple[str, str, str]:
    """(the key to show once, its lookup prefix, its hash to store)."""
    prefix = secrets.token_hex(PREFIX_BYTES)
    key = f"pp_{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, hash_api_key(key)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def prefix_of(key: str) -> str | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "pp" or len(parts[1]) != PREFIX_BYTES * 2:
        return None
    return parts[1]


def matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_api_key(key), stored_hash)
