"""auth_service's HTTP operations (API.md section 2): HTTP in, HTTP out; the logic is in `service`."""

from __future__ import annotations

from starlette.responses import JSONResponse

from auth_service import schemas, service
from auth_service.service import Auth
from common.api import Call, Operation
from common.auth import KeySet
from common.errors import Forbidden
from common.pagination import PageQuery


def operations(auth: Auth, published: KeySet) -> list[Operation]:
    """Every operation of the service, bound to its collaborators."""

    async def register(call: Call[schemas.Register, None]) -> schemas.User:
        if not auth.settings.registration_open:
            raise Forbidden("Registration is closed; ask an admin for an account.")
        body = call.body
        return await service.create_user(
            call.db, auth, username=body.username, password=body.password, email=body.email
        )

    async def login(call: Call[schemas.Login, None]) -> schemas.TokenPair:
        return await service.login(call.db, auth, call.body.username, call.body.password)

    async def refresh(call: Call[schemas.RefreshRequest, None]) -> schemas.TokenPair:
        return await service.refresh(call.db, auth, call.body.refresh_token)

    async def logout(call: Call[schemas.RefreshRequest, None]) -> None:
        await service.logout(call.db, call.body.refresh_token)

    async def me(call: Call[None, None]) -> schemas.User:
        # The account as `confirm_caller` (service.require_current_caller) found it, for this request.
        account = call.confirmed
        if not isinstance(account, schemas.User):
            raise TypeError("auth_service confirms every caller with their account")
        return account

    async def change_password(call: Call[schemas.ChangePassword, None]) -> None:
        body = call.body
        await service.change_password(call.db, auth, call.principal, body.current_password, body.new_password)

    async def create_api_token(call: Call[schemas.CreateApiToken, None]) -> schemas.NewApiToken:
        return await service.create_api_token(call.db, call.principal, call.body.name, call.body.expires_in_days)

    async def list_api_tokens(call: Call[None, PageQuery]) -> schemas.ApiTokenList:
        return await service.list_api_tokens(call.db, call.principal, call.query.limit, call.query.cursor)

    async def delete_api_token(call: Call[None, None]) -> None:
        await service.delete_api_token(call.db, call.principal, call.path("token_id"))

    async def token(call: Call[schemas.TokenGrant, None]) -> schemas.AccessToken:
        return await service.exchange_api_token(call.db, auth, call.body.api_token)

    async def list_users(call: Call[None, schemas.UserQuery]) -> schemas.UserList:
        return await service.list_users(call.db, call.query)

    async def create_user(call: Call[schemas.CreateUser, None]) -> schemas.User:
        body = call.body
        return await service.create_user(
            call.db,
            auth,
            username=body.username,
            password=body.password,
            email=body.email,
            roles=body.roles,
            groups=body.groups,
        )

    async def get_user(call: Call[None, None]) -> schemas.User:
        service.require_may_read_user(call.principal, call.path("username"))
        return await service.get_user(call.db, call.path("username"))

    async def update_user(call: Call[schemas.UpdateUser, None]) -> schemas.User:
        return await service.update_user(call.db, auth, call.path("username"), call.body)

    async def delete_user(call: Call[None, None]) -> None:
        await service.delete_user(call.db, call.path("username"))

    async def list_groups(call: Call[None, PageQuery]) -> schemas.GroupList:
        return await service.list_groups(call.db, call.query.limit, call.query.cursor)

    async def create_group(call: Call[schemas.CreateGroup, None]) -> schemas.Group:
        return await service.create_group(call.db, call.body.name, call.body.description)

    async def delete_group(call: Call[None, None]) -> None:
        await service.delete_group(call.db, call.path("name"))

    async def add_member(call: Call[None, None]) -> None:
        await service.add_member(call.db, call.path("name"), call.path("username"))

    async def remove_member(call: Call[None, None]) -> None:
        await service.remove_member(call.db, call.path("name"), call.path("username"))

    async def jwks(_: Call[None, None]) -> JSONResponse:
        # Cacheable for a short while: a rotated key must reach verifiers soon.
        return JSONResponse(published.to_jwks(), headers={"Cache-Control": "public, max-age=300"})

    users, tokens, groups = ("users",), ("tokens",), ("groups",)
    return [
        Operation("POST", "/register", register, "Create an account (while registration is open).", auth="none",
                  body=schemas.Register, response=schemas.User, status_code=201, errors=(403, 409), tags=users),
        Operation("POST", "/login", login, "Log in with a password: an access token and a refresh token.",
                  auth="none", body=schemas.Login, response=schemas.TokenPair, errors=(401, 429), tags=tokens),
        Operation("POST", "/refresh", refresh, "Spend a refresh token for a new pair.", auth="none",
                  body=schemas.RefreshRequest, response=schemas.TokenPair, errors=(401,), tags=tokens),
        Operation("POST", "/logout", logout, "End the login of a refresh token.", auth="none",
                  body=schemas.RefreshRequest, status_code=204, tags=tokens),
        Operation("GET", "/me", me, "The caller's account.", response=schemas.User, tags=users, read_only=True),
        Operation("PUT", "/me/password", change_password, "Change one's password; revokes refresh tokens.",
                  body=schemas.ChangePassword, status_code=204, tags=users),
        Operation("POST", "/api-tokens", create_api_token, "Create an API token (its secret is shown once).",
                  body=schemas.CreateApiToken, response=schemas.NewApiToken, status_code=201, tags=tokens),
        Operation("GET", "/api-tokens", list_api_tokens, "The caller's API tokens, without secrets.",
                  query=PageQuery, response=schemas.ApiTokenList, tags=tokens),
        Operation("DELETE", "/api-tokens/{token_id}", delete_api_token, "Delete an API token (owner or admin).",
                  status_code=204, errors=(404,), tags=tokens),
        Operation("POST", "/token", token, "Exchange an API token for an access token.", auth="none",
                  body=schemas.TokenGrant, response=schemas.AccessToken, errors=(401,), tags=tokens),
        Operation("GET", "/users", list_users, "List users (admin).", auth="admin",
                  query=schemas.UserQuery, response=schemas.UserList, tags=users),
        Operation("POST", "/users", create_user, "Create a user with roles and groups (admin).", auth="admin",
                  body=schemas.CreateUser, response=schemas.User, status_code=201, errors=(404, 409), tags=users),
        Operation("GET", "/users/{username}", get_user, "One user (admin, service, or that user).",
                  response=schemas.User, errors=(403, 404), tags=users),
        Operation("PATCH", "/users/{username}", update_user, "Change a user (admin); see API.md for revocations.",
                  auth="admin", body=schemas.UpdateUser, response=schemas.User, errors=(404, 409), tags=users),
        Operation("DELETE", "/users/{username}", delete_user, "Delete a user (admin); the name stays spent.",
                  auth="admin", status_code=204, errors=(404, 409), tags=users),
        Operation("GET", "/groups", list_groups, "List groups with member counts.",
                  query=PageQuery, response=schemas.GroupList, tags=groups),
        Operation("POST", "/groups", create_group, "Create a group (admin).", auth="admin",
                  body=schemas.CreateGroup, response=schemas.Group, status_code=201, errors=(409,), tags=groups),
        Operation("DELETE", "/groups/{name}", delete_group, "Delete a group (admin).", auth="admin",
                  status_code=204, errors=(404,), tags=groups),
        Operation("PUT", "/groups/{name}/members/{username}", add_member, "Add a member (admin, idempotent).",
                  auth="admin", status_code=204, errors=(404,), tags=groups),
        Operation("DELETE", "/groups/{name}/members/{username}", remove_member, "Remove a member (admin).",
                  auth="admin", status_code=204, errors=(404,), tags=groups),
        Operation("GET", "/.well-known/jwks.json", jwks, "Public keys that verify access tokens.", auth="none",
                  response=schemas.Jwks, tags=tokens),
    ]  # fmt: skip
