"""Users, credentials and tokens. Plain async functions: session first, the rest keyword-only."""

from __future__ import annotations

import asyncio
import functools
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from plantpulse.auth.models import User
from plantpulse.auth.permissions import Role
from plantpulse.auth.principals import PrincipalCache
from plantpulse.auth.revocation import RevocationStore
from plantpulse.auth.schemas import UserCreate, UserUpdate
from plantpulse.auth.security import (
    TokenClaims,
    create_token,
    decode_token,
    hash_password,
    hash_password_sync,
    verify_password,
)
from plantpulse.config import AuthSettings
from plantpulse.db import after_commit, utcnow
from plantpulse.errors import Conflict, NotAuthenticated, NotFound, PermissionDenied


class UserNotFound(NotFound):
    pass


class UserExists(Conflict):
    pass


class InvalidCredentials(NotAuthenticated):
    pass


class LastManagementAccount(Conflict):
    pass


@functools.cache
def _dummy_hash() -> str:
    return hash_password_sync("plantpulse-timing-equaliser")


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None or user.deleted_at is not None:
        raise UserNotFound(f"user {user_id} does not exist")
    return user


async def find_by_login(session: AsyncSession, login: str) -> User | None:
    """A user by username or email, case-insensitively; deleted users are not found."""
    column = User.email if "@" in login else User.username
    return await session.scalar(
        select(User).where(func.lower(column) == login.lower(), User.deleted_at.is_(None))
    )


async def create_user(session: AsyncSession, *, data: UserCreate, role: Role) -> User:
    clash = await session.scalar(
        select(User).where(
            (func.lower(User.username) == data.username.lower())
            | (func.lower(User.email) == data.email.lower())
        )
    )
    if clash is not None:
        which = "username" if clash.username.lower() == data.username.lower() else "email"
        raise UserExists(f"a user with this {which} already exists")
    user = User(
        username=data.username,
        email=data.email.lower(),
        password_hash=await hash_password(data.password),
        role=role,
        factory_id=data.factory_id,
        department=data.department,
    )
    session.add(user)
    await session.flush()
    return user


async def _user_changed(
    session: AsyncSession, principals: PrincipalCache, user_id: uuid.UUID
) -> None:
    """Announce a change to a user before it commits (failing the request if that cannot be
    done) and again once it has (auth/principals.py explains both)."""
    await principals.user_changed(user_id)
    after_commit(session, functools.partial(principals.user_changed_after_commit, user_id))


async def authenticate(
    session: AsyncSession, *, login: str, password: str, principals: PrincipalCache
) -> User:
    user = await find_by_login(session, login)
    if user is None:
        # Verify anyway, so a wrong username costs as long as a wrong password and response
        # times do not reveal which usernames exist.
        await verify_password(password, await asyncio.to_thread(_dummy_hash))
        raise InvalidCredentials("incorrect username or password")
    if not await verify_password(password, user.password_hash):
        raise InvalidCredentials("incorrect username or password")
    if not user.is_active:
        raise InvalidCredentials("this account is deactivated")
    user.last_login_at = utcnow()
    await session.flush()
    # Only `last_login_at` changed (shown by /me): refreshed after the commit, best effort, so
    # logging in never depends on Redis.
    after_commit(session, functools.partial(principals.user_changed_after_commit, user.id))
    return user


def issue_tokens(settings: AuthSettings, *, user: User) -> TokenPair:
    version = user.token_version
    access, _ = create_token(settings, subject=user.id, token_type="access", version=version)  # noqa: S106
    refresh, _ = create_token(settings, subject=user.id, token_type="refresh", version=version)  # noqa: S106
    return TokenPair(access, refresh, settings.access_token_minutes * 60)


async def user_for_token(
    session: AsyncSession,
    *,
    claims: TokenClaims,
    revocations: RevocationStore,
) -> User:
    """The live user behind verified claims: not revoked, active, token version current."""
    if await revocations.is_revoked(claims.jti):
        raise NotAuthenticated("token has been revoked")
    user = await session.get(User, claims.subject)
    if user is None or user.deleted_at is not None:
        raise NotAuthenticated("the user of this token no longer exists")
    if not user.is_active:
        raise NotAuthenticated("this account is deactivated")
    if claims.version != user.token_version:
        raise NotAuthenticated("token has been revoked")
    return user


async def refresh(
    session: AsyncSession,
    *,
    settings: AuthSettings,
    revocations: RevocationStore,
    refresh_token: str,
) -> tuple[User, TokenPair]:
    """Rotate: the presented refresh token is spent and a new pair is issued."""
    claims = decode_token(settings, refresh_token, expected_type="refresh")
    user = await user_for_token(session, claims=claims, revocations=revocations)
    if not await revocations.revoke_once(claims.jti, claims.expires_at):
        raise NotAuthenticated("token has been revoked")
    return user, issue_tokens(settings, user=user)


async def logout(
    *,
    settings: AuthSettings,
    revocations: RevocationStore,
    principals: PrincipalCache,
    access: TokenClaims,
    refresh_token: str | None,
) -> None:
    # Stored first, then announced: a process that misses the announcement's cache entry
    # reads the revocation.
    await revocations.revoke(access.jti, access.expires_at)
    await principals.token_revoked(access.jti)
    if refresh_token:
        claims = decode_token(settings, refresh_token, expected_type="refresh")
        if claims.subject != access.subject:
            raise PermissionDenied("the refresh token belongs to another user")
        await revocations.revoke(claims.jti, claims.expires_at)


async def change_password(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    current_password: str,
    new_password: str,
    principals: PrincipalCache,
) -> User:
    """Set a new password and bump the token version, which ends every older session."""
    user = await get_user(session, user_id)
    if not await verify_password(current_password, user.password_hash):
        raise InvalidCredentials("current password is incorrect")
    user.password_hash = await hash_password(new_password)
    user.token_version += 1
    await session.flush()
    await _user_changed(session, principals, user.id)
    return user


async def list_users(
    session: AsyncSession,
    *,
    role: Role | None,
    is_active: bool | None,
    limit: int,
    offset: int,
) -> tuple[list[User], int]:
    query = select(User).where(User.deleted_at.is_(None))
    if role is not None:
        query = query.where(User.role == role)
    if is_active is not None:
        query = query.where(User.is_active.is_(is_active))
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(
        query.order_by(User.created_at, User.id).limit(limit).offset(offset)
    )
    return list(rows), int(total or 0)


async def _ensure_not_last_management(session: AsyncSession, user: User, action: str) -> None:
    if user.role != Role.management or not user.is_active:
        return
    # Lock the management rows so two concurrent demotions can't each see "one other left".
    others = await session.scalars(
        select(User.id)
        .where(
            User.role == Role.management,
            User.is_active.is_(True),
            User.deleted_at.is_(None),
            User.id != user.id,
        )
        .with_for_update()
    )
    if not list(others):
        raise LastManagementAccount(f"cannot {action} the last active management account")


async def update_user(
    session: AsyncSession, *, user_id: uuid.UUID, data: UserUpdate, principals: PrincipalCache
) -> User:
    user = await get_user(session, user_id)
    if data.role is not None and data.role != Role.management:
        await _ensure_not_last_management(session, user, "demote")
    if data.is_active is False:
        await _ensure_not_last_management(session, user, "deactivate")
    for name, value in data.model_dump(exclude_unset=True).items():
        if name in ("role", "is_active") and value is None:
            continue
        setattr(user, name, value)
    await session.flush()
    await _user_changed(session, principals, user.id)
    return user


async def set_active(
    session: AsyncSession, *, user_id: uuid.UUID, active: bool, principals: PrincipalCache
) -> User:
    return await update_user(
        session, user_id=user_id, data=UserUpdate(is_active=active), principals=principals
    )


async def delete_user(
    session: AsyncSession, *, user_id: uuid.UUID, principals: PrincipalCache
) -> None:
    """Soft delete: the row stays for audit trails, the account is gone for every purpose."""
    user = await get_user(session, user_id)
    await _ensure_not_last_management(session, user, "delete")
    user.is_active = False
    user.deleted_at = utcnow()
    # Free the username and email for reuse while keeping the row.
    suffix = f"~deleted~{user.id.hex[:12]}"
    user.username = f"{user.username[: 64 - len(suffix)]}{suffix}"
    user.email = f"{user.email[: 254 - len(suffix)]}{suffix}"
    await session.flush()
    await _user_changed(session, principals, user.id)
