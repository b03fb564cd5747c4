from __future__ import annotations

import uuid
from typing import Literal

import email_validator
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

from plantpulse.auth.permissions import Permission, Role
from plantpulse.schemas import Text, UtcDatetime

MIN_PASSWORD_LENGTH = 8

# Plant networks often use internal ".local" mail domains; email-validator rejects them as
# special-use unless removed from this list (its documented way to allow one).
if "local" in email_validator.SPECIAL_USE_DOMAIN_NAMES:
    email_validator.SPECIAL_USE_DOMAIN_NAMES.remove("local")

Username = Field(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")


def _check_password(value: str) -> str:
    if len(value) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must be at least {MIN_PASSWORD_LENGTH} characters long")
    if len(value.encode()) > 1024:
        raise ValueError("password must be at most 1024 bytes")
    return value


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Username
    email: EmailStr
    password: str = Field(description=f"At least {MIN_PASSWORD_LENGTH} characters")
    factory_id: Text | None = Field(default=None, max_length=64)
    department: Text | None = Field(default=None, max_length=128)
    role: Role | None = Field(
        default=None, description="Honoured only when a management user makes the call"
    )

    _password = field_validator("password")(_check_password)


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    is_active: bool | None = None
    department: Text | None = Field(default=None, max_length=128)
    factory_id: Text | None = Field(default=None, max_length=64)


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    username: str
    email: str
    role: Role
    factory_id: str | None
    department: str | None
    is_active: bool
    created_at: UtcDatetime
    updated_at: UtcDatetime
    last_login_at: UtcDatetime | None


class Me(UserRead):
    permissions: list[Permission]


class LoginRequest(BaseModel):
    username: Text = Field(min_length=1, max_length=254, description="Username or email")
    password: str = Field(min_length=1, max_length=1024)


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1)


class LogoutRequest(BaseModel):
    refresh_token: str | None = Field(
        default=None, description="Also revoke this refresh token (recommended)"
    )


class ChangePasswordRequest(BaseModel):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str

    _password = field_validator("new_password")(_check_password)


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 scheme name
    expires_in: int = Field(description="Access token lifetime in seconds")
    user: UserRead
