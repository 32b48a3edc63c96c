"""Request and response models of auth_service (API.md section 2)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from common.api import RequestModel
from common.naming import USERNAME_PATTERN
from common.pagination import PageQuery

Username = Annotated[str, StringConstraints(strip_whitespace=False, to_lower=True, pattern=f"^{USERNAME_PATTERN}$")]
Password = Annotated[str, Field(min_length=8, max_length=1024)]
GroupName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Email = Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")]
Role = Literal["admin", "service"]


class User(BaseModel):
    id: str
    username: str
    email: str | None
    roles: list[str]
    groups: list[str]
    disabled: bool
    created_at: datetime


class UserList(BaseModel):
    items: list[User]
    next_cursor: str | None


class Register(RequestModel):
    username: Username
    password: Password
    email: Email | None = None


class CreateUser(Register):
    roles: list[Role] = Field(default_factory=list)
    groups: list[GroupName] = Field(default_factory=list)


class UpdateUser(RequestModel):
    roles: list[Role] | None = None
    disabled: bool | None = None
    password: Password | None = None
    email: Email | None = None


class Login(RequestModel):
    username: Annotated[str, Field(max_length=256)]
    password: Annotated[str, Field(max_length=1024)]


class RefreshRequest(RequestModel):
    refresh_token: Annotated[str, Field(max_length=256)]


class ChangePassword(RequestModel):
    current_password: Annotated[str, Field(max_length=1024)]
    new_password: Password


class TokenPair(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a scheme name
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


class AccessToken(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a scheme name
    expires_in: int


class TokenGrant(RequestModel):
    grant_type: Literal["api_token"]
    api_token: Annotated[str, Field(max_length=256)]


class CreateApiToken(RequestModel):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    expires_in_days: Annotated[int, Field(ge=1, le=365)] = 90


class ApiToken(BaseModel):
    id: str
    name: str
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None


class NewApiToken(ApiToken):
    token: str


class ApiTokenList(BaseModel):
    items: list[ApiToken]
    next_cursor: str | None


class Group(BaseModel):
    name: str
    description: str
    member_count: int


class GroupList(BaseModel):
    items: list[Group]
    next_cursor: str | None


class CreateGroup(RequestModel):
    name: GroupName
    description: Annotated[str, Field(max_length=1000)] = ""


class UserQuery(PageQuery):
    q: Annotated[str, Field(max_length=64)] | None = None


class Jwks(BaseModel):
    keys: list[dict[str, str]]
