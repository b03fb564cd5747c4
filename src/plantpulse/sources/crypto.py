"""Header values of sources (tokens, passwords) encrypted at rest with Fernet (AES-128-CBC +
HMAC-SHA256). The key is `sources.secret_key`, or else derived from the JWT secret (HKDF), so a
deployment has nothing more to configure; the API never returns the values either way."""

from __future__ import annotations

import base64
import json

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from plantpulse.config import Settings


class SecretsUnreadable(Exception):
    """Stored header values cannot be decrypted (the key changed)."""


class HeaderCipher:
    def __init__(self, secret: str) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"plantpulse sources headers"
        ).derive(secret.encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    @classmethod
    def from_settings(cls, settings: Settings) -> HeaderCipher:
        secret = settings.sources.secret_key or settings.auth.jwt_secret
        return cls(secret.get_secret_value())

    def encrypt(self, headers: dict[str, str]) -> str:
        return self._fernet.encrypt(json.dumps(headers).encode()).decode()

    def decrypt(self, token: str) -> dict[str, str]:
        try:
            headers: dict[str, str] = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            raise SecretsUnreadable(
                "the stored header values cannot be decrypted (was the secret key or the JWT "
                "secret changed?); set the headers again"
            ) from None
        return headers
