from __future__ import annotations

import pytest
from pydantic import SecretStr

from plantpulse.config import AuthSettings, Settings, SourcesSettings
from plantpulse.sources.crypto import HeaderCipher, SecretsUnreadable


def settings(jwt_secret: str, secret_key: str | None = None) -> Settings:
    return Settings(
        _env_file=None,
        env="test",
        auth=AuthSettings(jwt_secret=SecretStr(jwt_secret)),
        sources=SourcesSettings(secret_key=SecretStr(secret_key) if secret_key else None),
    )


def test_round_trip_and_ciphertext_hides_the_values() -> None:
    cipher = HeaderCipher.from_settings(settings("a" * 32))
    token = cipher.encrypt({"Authorization": "Bearer s3cret"})
    assert "s3cret" not in token
    assert cipher.decrypt(token) == {"Authorization": "Bearer s3cret"}


def test_a_dedicated_key_survives_a_jwt_secret_change() -> None:
    token = HeaderCipher.from_settings(settings("a" * 32, "k" * 20)).encrypt({"X": "1"})
    assert HeaderCipher.from_settings(settings("b" * 32, "k" * 20)).decrypt(token) == {"X": "1"}


def test_another_key_cannot_read_them_and_says_so() -> None:
    token = HeaderCipher.from_settings(settings("a" * 32)).encrypt({"X": "1"})
    with pytest.raises(SecretsUnreadable, match="set the headers again"):
        HeaderCipher.from_settings(settings("b" * 32)).decrypt(token)


def test_a_short_dedicated_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        SourcesSettings(secret_key=SecretStr("short"))
