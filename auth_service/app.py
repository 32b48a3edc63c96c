"""auth_service: users, groups, roles, passwords and tokens, under `/auth`."""

from starlette.applications import Starlette

from auth_service.settings import AuthSettings
from common.app import create_service_app
from common.settings import load_settings

SERVICE = "auth_service"
PREFIX = "/auth"


def create_app(settings: AuthSettings | None = None) -> Starlette:
    """The auth_service app (`uvicorn --factory auth_service.app:create_app`)."""
    return create_service_app(
        service=SERVICE,
        prefix=PREFIX,
        settings=settings or load_settings(AuthSettings),
        description="Users, groups, roles, passwords, access and refresh tokens, API tokens.",
    )
