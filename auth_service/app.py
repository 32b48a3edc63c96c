"""auth_service: users, groups, roles, passwords and tokens, under `/auth`."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from auth_service import service
from auth_service.keys import load_signing_key, published_keys
from auth_service.passwords import Passwords
from auth_service.routes import operations
from auth_service.service import Auth
from auth_service.settings import AuthSettings
from common.app import create_service_app
from common.resources import Resources
from common.settings import load_settings

SERVICE = "auth_service"
PREFIX = "/auth"


def create_app(settings: AuthSettings | None = None) -> Starlette:
    """The auth_service app (`uvicorn --factory auth_service.app:create_app`)."""
    settings = settings or load_settings(AuthSettings)
    signing = load_signing_key(settings)
    published = published_keys(settings, signing)
    auth = Auth(settings, Passwords(settings), signing)

    @asynccontextmanager
    async def lifespan(resources: Resources) -> AsyncIterator[None]:
        bootstrap = asyncio.create_task(service.ensure_admin_until_done(resources.sessions, auth))
        try:
            yield
        finally:
            bootstrap.cancel()
            auth.passwords.close()

    return create_service_app(
        service=SERVICE,
        prefix=PREFIX,
        settings=settings,
        operations=operations(auth, published),
        lifespan=lifespan,
        token_keys=published,
        # Before any body is read: a deleted, disabled or demoted account's token stops working here at once.
        confirm_caller=service.require_current_caller,
        description="Users, groups, roles, passwords, access and refresh tokens, API tokens.",
    )
