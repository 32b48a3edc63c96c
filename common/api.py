"""What a service declares: its operations, who may call each, and what a handler receives.

A service lists `Operation`s. Each names its handler, who may call it (`auth`), its body, query
and response models, the headers it reads and the statuses it answers. The same declarations
drive the request pipeline (`common.endpoints`: authentication first, then the body) and the
OpenAPI document (`common.openapi`), so neither can drift from the other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response

from common.auth import Principal
from common.db import checkpoint
from common.reads import Reads

if TYPE_CHECKING:
    from common.resources import Resources

Auth = Literal["none", "user", "admin", "service_or_admin"]
"""Who may call an operation: anyone, any authenticated user, admins, or services and admins."""


class RequestModel(BaseModel):
    """Base of request bodies: unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


class QueryModel(BaseModel):
    """Base of query-string models."""

    model_config = ConfigDict(extra="ignore")


BodyT = TypeVar("BodyT")
QueryT = TypeVar("QueryT")


class Call(Generic[BodyT, QueryT]):
    """What a handler receives: the request, its validated body and query, the caller, the
    running service's resources, and the request's database session."""

    def __init__(
        self,
        request: Request,
        body: BodyT,
        query: QueryT,
        *,
        session: AsyncSession | None,
        resources: Resources,
        principal: Principal | None,
        confirmed: object = None,
    ) -> None:
        self.request = request
        self.body = body
        self.query = query
        self.resources = resources
        self.confirmed = confirmed
        """What the service's own `confirm_caller` returned for the caller (auth_service: the account, as it
        stands), None without one: a handler that needs those facts need not read them again."""
        self._session = session
        self._principal = principal
        self.after_commit: list[Callable[[], Awaitable[None]]] = []

    @property
    def db(self) -> AsyncSession:
        """The request's session; its transaction commits when the handler returns (`common.db`)."""
        if self._session is None:
            raise RuntimeError("this operation has no transaction: it is declared read_only (call.reads)")
        return self._session

    @property
    def reads(self) -> Reads:
        """Statements outside any transaction (`common.reads`), for operations declared `read_only`."""
        return self.resources.reads

    @property
    def principal(self) -> Principal:
        """The authenticated caller (operations whose `auth` is not `none`)."""
        if self._principal is None:
            raise RuntimeError("this operation is declared with auth='none': it has no caller")
        return self._principal

    async def checkpoint(self) -> None:
        """Make the request's changes so far durable now (see `common.db.checkpoint`)."""
        await checkpoint(self.db)

    def on_commit(self, action: Callable[[], Awaitable[None]]) -> None:
        """Run `action` once the request's transaction has committed (never if it rolls back).

        For side effects outside the database that must not happen unless the rows changed, such
        as deleting bytes whose rows are gone. A failure there is logged, not answered.
        """
        self.after_commit.append(action)

    def path(self, name: str) -> str:
        """A path parameter, as decoded by the router."""
        value: str = self.request.path_params[name]
        return value

    def header(self, name: str) -> str | None:
        """A request header (declare it on the operation, so that the OpenAPI document lists it)."""
        return self.request.headers.get(name)


Handler = Callable[[Call[Any, Any]], Awaitable[BaseModel | Response | None]]


@dataclass(frozen=True)
class Header:
    """A request header an operation reads, for its OpenAPI document."""

    name: str
    description: str
    example: str | None = None


@dataclass(frozen=True)
class Operation:
    """One HTTP operation of a service; `path` is relative to the service prefix.

    `errors` are the problem statuses the handler itself may answer; those that follow from
    `auth` (401, 403), from a body or query (400) and from a dependency being down (503) are
    added by the declaration. `responses` are other statuses with a description (206, 304, 307).
    """

    method: str
    path: str
    handler: Handler
    summary: str
    auth: Auth = "user"
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status_code: int = 200
    errors: tuple[int, ...] = ()
    responses: dict[int, str] = field(default_factory=dict)
    headers: tuple[Header, ...] = ()
    raw_body_media_type: str | None = None
    response_media_type: str | None = None
    tags: tuple[str, ...] = ()
    transfer: bool = False
    """Whether the handler moves artifact bytes while it runs (a streamed upload): it is then bounded
    by its progress (S3's and the client's timeouts), not by `request_timeout_seconds`."""
    read_only: bool = False
    """Whether the handler only reads, each statement on its own (`call.reads`): it then runs in no
    transaction and has no session (`call.db`), so it pays no `BEGIN` and `COMMIT` round trips."""

    @property
    def operation_id(self) -> str:
        """The handler's name: unique within a service (`create_service_app` checks it)."""
        return self.handler.__name__

    @property
    def problem_statuses(self) -> set[int]:
        """Every problem status the operation may answer."""
        statuses = set(self.errors) | {503}
        if self.auth != "none":
            statuses.add(401)
        if self.auth in {"admin", "service_or_admin"}:
            statuses.add(403)
        if self.body is not None or self.query is not None or self.raw_body_media_type is not None:
            statuses.add(400)
        return statuses
