"""package_service: packages, versions, access lists and their bytes in S3, under `/packages`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from common.app import Resources, create_service_app
from common.settings import load_settings
from package_service.routes import operations
from package_service.settings import PackageSettings
from package_service.transfers import Transfers

SERVICE = "package_service"
PREFIX = "/packages"


def create_app(settings: PackageSettings | None = None) -> Starlette:
    """The package_service app (`uvicorn --factory package_service.app:create_app`)."""
    settings = settings or load_settings(PackageSettings)
    transfers = Transfers(settings)

    @asynccontextmanager
    async def lifespan(resources: Resources) -> AsyncIterator[None]:
        transfers.bind(resources)
        yield

    return create_service_app(
        service=SERVICE,
        prefix=PREFIX,
        settings=settings,
        operations=operations(transfers, settings),
        lifespan=lifespan,
        uses_queue=True,
        description="Packages and versions, their access lists, uploads, downloads and search.",
    )
