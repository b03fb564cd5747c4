"""Password hashing and JWT encoding/decoding. Pure functions; no database, no FastAPI."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from jose import JWTError, jwt
from passlib.context import CryptContext

from plantpulse.config import AuthSettings
from plantpulse.errors import NotAuthenticated

# argon2 rather than bcrypt: passlib 1.7.4's bcrypt handler breaks with bcrypt >= 5.
_passwords = CryptContext(schemes=["argon2"], deprecated="auto")

TokenType = Literal["access", "refresh"]


def hash_password_sync(password: str) -> str:
    return _passwords.hash(password)


async def hash_password(password: str) -> str:
    # argon2 takes tens of milliseconds of CPU: keep it off the event loop.
    return await asyncio.to_thread(hash_password_sync, password)


async def verify_password(password: str, password_hash: str) -> bool:
    return await asyncio.to_thread(_passwords.verify, password, password_hash)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    subject: uuid.UUID
    token_type: TokenType
    jti: str
    issued_at: datetime
    expires_at: datetime
    version: int


def create_token(
    settings: AuthSettings, *, subject: uuid.UUID, token_type: TokenType, version: int
) -> tuple[str, TokenClaims]:
    now = datetime.now(UTC)
    lifetime = (
        timedelta(minutes=settings.access_token_minutes)
        if token_type == "access"  # noqa: S105 - a token kind, not a password
        else timedelta(days=settings.refresh_token_days)
    )
    claims = TokenClaims(
        subject=subject,
        token_type=token_type,
        jti=uuid.uuid4().hex,
        issued_at=now,
        expires_at=now + lifetime,
        version=version,
    )
    payload = {
        "sub": str(subject),
        "type": token_type,
        "jti": claims.jti,
        "iat": int(now.timestamp()),
        "exp": int(claims.expires_at.timestamp()),
        "ver": version,
    }
    token = jwt.encode(
        payload, settings.jwt_secret.get_secret_value(), algorithm=settings.jwt_algorithm
    )
    return token, claims


def decode_token(settings: AuthSettings, token: str, *, expected_type: TokenType) -> TokenClaims:
    """Verify signature, algorithm, expiry and type. Revocation is checked by the caller."""
    try:
        # Only the configured algorithm is accepted, so `alg: none` and algorithm swaps fail here.
        payload = jwt.decode(
            token,
            settings.jwt_secret.get_secret_value(),
            algorithms=[settings.jwt_algorithm],
            options={"require_exp": True, "require_iat": True, "require_sub": True},
        )
    except JWTError as exc:
        message = "token has expired" if "expired" in str(exc).lower() else "invalid token"
        raise NotAuthenticated(message) from exc
    if payload.get("type") != expected_type:
        article = "an" if expected_type == "access" else "a"
        raise NotAuthenticated(f"expected {article} {expected_type} token")
    try:
        return TokenClaims(
            subject=uuid.UUID(str(payload["sub"])),
            token_type=expected_type,
            jti=str(payload["jti"]),
            issued_at=datetime.fromtimestamp(int(payload["iat"]), UTC),
            expires_at=datetime.fromtimestamp(int(payload["exp"]), UTC),
            version=int(payload.get("ver", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise NotAuthenticated("invalid token") from exc
