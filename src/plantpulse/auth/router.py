from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from plantpulse.auth import service
from plantpulse.auth.dependencies import (
    CurrentPrincipal,
    OptionalPrincipal,
    Principal,
    require,
)
from plantpulse.auth.models import User
from plantpulse.auth.permissions import ROLE_PERMISSIONS, ROLES_BY_RANK, Permission, Role
from plantpulse.auth.schemas import (
    ChangePasswordRequest,
    LoginRequest,
    LogoutRequest,
    Me,
    RefreshRequest,
    TokenResponse,
    UserCreate,
    UserRead,
    UserUpdate,
)
from plantpulse.db import DbSession
from plantpulse.errors import BadRequest, PermissionDenied, error_responses
from plantpulse.schemas import Page
from plantpulse.state import AppResources

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])
users_router = APIRouter(
    prefix="/api/v1/users",
    tags=["users"],
    responses=error_responses(401, 403),
)

ManageUsers = Annotated[Principal, Depends(require(Permission.users_manage))]

_LOGIN_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": LoginRequest.model_json_schema()},
        "application/x-www-form-urlencoded": {
            "schema": {
                "type": "object",
                "required": ["username", "password"],
                "properties": {
                    "username": {"type": "string", "description": "Username or email"},
                    "password": {"type": "string", "format": "password"},
                },
            }
        },
    },
}


def _token_response(user: User, tokens: service.TokenPair) -> TokenResponse:
    return TokenResponse(
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        expires_in=tokens.expires_in,
        user=UserRead.model_validate(user),
    )


async def _login_body(request: Request) -> LoginRequest:
    """JSON for programs, OAuth2 form data for the Authorize button in /docs."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw: Any
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form()
        raw = {key: form.get(key) for key in ("username", "password") if key in form}
    elif content_type in ("application/json", ""):
        try:
            raw = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise BadRequest(f"request body is not valid JSON: {str(exc)[:200]}") from exc
    else:
        raise BadRequest(f"unsupported content type {content_type!r}; send JSON or form data")
    try:
        return LoginRequest.model_validate(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from exc


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(401, 403, 409, 422),
)
async def register(
    data: UserCreate,
    session: DbSession,
    resources: AppResources,
    caller: OptionalPrincipal,
) -> UserRead:
    """Create an account; only a management caller may choose its role.

    Without a management token the account is always an `operator`: a body that omits `role`
    or asks for `operator` creates one, and a body that asks for a higher role is refused with
    403 (rather than silently downgraded, so a script that expects a supervisor finds out).
    """
    manager = caller is not None and caller.can(Permission.users_manage)
    if not manager and not resources.settings.auth.allow_self_registration:
        raise PermissionDenied("self-registration is disabled; ask a management user")
    role = ROLES_BY_RANK[0]
    if data.role is not None and data.role != role:
        if not manager:
            raise PermissionDenied(f"only a management user can create a {data.role} account")
        role = data.role
    user = await service.create_user(session, data=data, role=role)
    return UserRead.model_validate(user)


@router.post(
    "/login",
    openapi_extra={"requestBody": _LOGIN_BODY},
    responses=error_responses(400, 401, 422),
)
async def login(
    login: Annotated[LoginRequest, Depends(_login_body)],
    session: DbSession,
    resources: AppResources,
) -> TokenResponse:
    """Exchange username (or email) and password for an access and a refresh token."""
    user = await service.authenticate(
        session, login=login.username, password=login.password, principals=resources.principals
    )
    return _token_response(user, service.issue_tokens(resources.settings.auth, user=user))


@router.post("/refresh", responses=error_responses(401, 422))
async def refresh(
    data: RefreshRequest, session: DbSession, resources: AppResources
) -> TokenResponse:
    """Trade a refresh token for a new pair; the presented refresh token stops working."""
    user, tokens = await service.refresh(
        session,
        settings=resources.settings.auth,
        revocations=resources.revocations,
        refresh_token=data.refresh_token,
    )
    return _token_response(user, tokens)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 403, 422),
)
async def logout(
    principal: CurrentPrincipal,
    resources: AppResources,
    data: LogoutRequest | None = None,
) -> None:
    """Revoke the access token (and the refresh token, if given) until they expire."""
    await service.logout(
        settings=resources.settings.auth,
        revocations=resources.revocations,
        principals=resources.principals,
        access=principal.claims,
        refresh_token=data.refresh_token if data else None,
    )


@router.get("/me", responses=error_responses(401))
async def me(principal: CurrentPrincipal) -> Me:
    """The calling user, with the permissions of their role."""
    return Me.model_validate(
        {
            **UserRead.model_validate(principal.user).model_dump(),
            "permissions": sorted(principal.permissions),
        }
    )


@router.post("/change-password", responses=error_responses(401, 422))
async def change_password(
    data: ChangePasswordRequest,
    principal: CurrentPrincipal,
    session: DbSession,
    resources: AppResources,
) -> TokenResponse:
    """Change the caller's password; every other token of the user stops working."""
    user = await service.change_password(
        session,
        user_id=principal.user.id,
        current_password=data.current_password,
        new_password=data.new_password,
        principals=resources.principals,
    )
    return _token_response(user, service.issue_tokens(resources.settings.auth, user=user))


@users_router.get("", responses=error_responses(422))
async def list_users(
    _: ManageUsers,
    session: DbSession,
    role: Role | None = None,
    is_active: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Page[UserRead]:
    """List users, filtered by role and active state, oldest first."""
    users, total = await service.list_users(
        session, role=role, is_active=is_active, limit=limit, offset=offset
    )
    return Page(
        items=[UserRead.model_validate(u) for u in users], total=total, limit=limit, offset=offset
    )


@users_router.get("/roles")
async def roles(_: CurrentPrincipal) -> dict[Role, list[Permission]]:
    """The permission matrix: which permissions each role carries."""
    return {role: sorted(perms) for role, perms in ROLE_PERMISSIONS.items()}


@users_router.get("/{user_id}", responses=error_responses(404, 422))
async def get_user(user_id: uuid.UUID, _: ManageUsers, session: DbSession) -> UserRead:
    """One user."""
    return UserRead.model_validate(await service.get_user(session, user_id))


@users_router.patch("/{user_id}", responses=error_responses(404, 409, 422))
async def update_user(
    user_id: uuid.UUID,
    data: UserUpdate,
    _: ManageUsers,
    session: DbSession,
    resources: AppResources,
) -> UserRead:
    """Change role, active state, department or factory; the last manager stays a manager."""
    user = await service.update_user(
        session, user_id=user_id, data=data, principals=resources.principals
    )
    return UserRead.model_validate(user)


@users_router.post("/{user_id}/deactivate", responses=error_responses(404, 409, 422))
async def deactivate_user(
    user_id: uuid.UUID, _: ManageUsers, session: DbSession, resources: AppResources
) -> UserRead:
    """Lock the account out; its tokens stop working at once."""
    user = await service.set_active(
        session, user_id=user_id, active=False, principals=resources.principals
    )
    return UserRead.model_validate(user)


@users_router.post("/{user_id}/activate", responses=error_responses(404, 422))
async def activate_user(
    user_id: uuid.UUID, _: ManageUsers, session: DbSession, resources: AppResources
) -> UserRead:
    """Let a deactivated account log in again."""
    user = await service.set_active(
        session, user_id=user_id, active=True, principals=resources.principals
    )
    return UserRead.model_validate(user)


@users_router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409, 422),
)
async def delete_user(
    user_id: uuid.UUID, _: ManageUsers, session: DbSession, resources: AppResources
) -> None:
    """Soft-delete the account: it disappears from lists and can never log in again."""
    await service.delete_user(session, user_id=user_id, principals=resources.principals)
