"""package_service: packages, versions, access lists and their bytes in S3, under `/packages`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from common.app import create_service_app
from common.resources import Resources
from common.settings import load_settings
from package_service import presigned
from package_service.routes import operations
from package_service.settings import PackageSettings
from package_service.users import UserDirectory
from package_service.workers import Workers

SERVICE = "package_service"
PREFIX = "/packages"


def create_app(settings: PackageSettings | None = None) -> Starlette:
    """The package_service app (`uvicorn --factory package_service.app:create_app`)."""
    settings = settings or load_settings(PackageSettings)

    @asynccontextmanager
    async def lifespan(resources: Resources) -> AsyncIterator[None]:
        # Verdicts, re-queued validations and the janitor, for as long as the app runs. One per run of
        # the lifespan (tests serve one app twice at once); `app.state.workers` is the latest, for
        # readiness (`listening`) and tests (`sweep_once`).
        previous = getattr(app.state, "workers", None)

        async def abort_expired_uploads() -> int:
            return await presigned.abort_expired(resources.sessions, resources.s3)

        async with Workers(settings, abort_expired_uploads=abort_expired_uploads).running(resources) as running:
            app.state.workers = running

            async def verdicts_listening() -> None:
                # Verdicts still arrive by polling without it, but late: the service is degraded.
                if not running.listening:
                    raise ConnectionError("the verdict worker is not listening")

            resources.checks["verdicts"] = verdicts_listening
            try:
                yield
            finally:
                app.state.workers = previous

    app = create_service_app(
        service=SERVICE,
        prefix=PREFIX,
        settings=settings,
        operations=operations(settings, UserDirectory(settings)),
        lifespan=lifespan,
        uses_queue=True,
        description="Packages and versions, their access lists, uploads, downloads and search.",
    )
    return app
