"""Who is calling: bearer-token authentication and permission guards for routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from plantpulse.auth import service
from plantpulse.auth.permissions import ROLE_PERMISSIONS, Permission
from plantpulse.auth.principals import AuthUser
from plantpulse.auth.security import TokenClaims, decode_token
from plantpulse.db import DbSession
from plantpulse.errors import NotAuthenticated, PermissionDenied
from plantpulse.state import AppResources, Resources

LOGIN_PATH = "/api/v1/auth/login"

# auto_error=False: a missing token becomes our own 401 envelope, not FastAPI's.
bearer = OAuth2PasswordBearer(tokenUrl=LOGIN_PATH, auto_error=False)


@dataclass(frozen=True, slots=True)
class Principal:
    user: AuthUser
    claims: TokenClaims

    @property
    def permissions(self) -> frozenset[Permission]:
        return ROLE_PERMISSIONS[self.user.role]

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions


async def authenticate_token(session: AsyncSession, resources: Resources, token: str) -> Principal:
    """The caller behind an access token: from the principal cache when it may answer
    (auth/principals.py says why that is safe), else checked in full and remembered."""
    cache = resources.principals
    cached = cache.get(token)
    if cached is not None:
        return cached
    generation = cache.generation
    claims = decode_token(resources.settings.auth, token, expected_type="access")
    user = await service.user_for_token(session, claims=claims, revocations=resources.revocations)
    principal = Principal(user=AuthUser.of(user), claims=claims)
    cache.put(token, principal, generation=generation)
    return principal


async def get_principal(
    session: DbSession,
    resources: AppResources,
    token: Annotated[str | None, Depends(bearer)],
) -> Principal:
    if not token:
        raise NotAuthenticated("missing bearer token")
    return await authenticate_token(session, resources, token)


async def get_optional_principal(
    session: DbSession,
    resources: AppResources,
    token: Annotated[str | None, Depends(bearer)],
) -> Principal | None:
    """The caller if a token was sent; a bad token is still an error, never silently anonymous."""
    if not token:
        return None
    return await authenticate_token(session, resources, token)


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
OptionalPrincipal = Annotated[Principal | None, Depends(get_optional_principal)]


def require(permission: Permission) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets the request through only with `permission`."""

    async def guard(principal: CurrentPrincipal) -> Principal:
        if not principal.can(permission):
            raise PermissionDenied(f"this action needs the '{permission}' permission")
        return principal

    guard.__name__ = f"require_{permission.name}"
    return guard
