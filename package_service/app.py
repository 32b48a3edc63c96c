"""package_service: packages, versions, access lists and their bytes in S3, under `/packages`."""

from starlette.applications import Starlette

from common.app import create_service_app
from common.settings import load_settings
from package_service.settings import PackageSettings

SERVICE = "package_service"
PREFIX = "/packages"


def create_app(settings: PackageSettings | None = None) -> Starlette:
    """The package_service app (`uvicorn --factory package_service.app:create_app`)."""
    return create_service_app(
        service=SERVICE,
        prefix=PREFIX,
        settings=settings or load_settings(PackageSettings),
        uses_queue=True,
        description="Packages and versions, their access lists, uploads, downloads and search.",
    )
