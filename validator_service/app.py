"""validator_service: access decisions, admission rules and content validation, under `/validate`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from common.app import create_service_app
from common.resources import Resources
from common.settings import load_settings
from validator_service.packages import PackageDirectory
from validator_service.routes import operations
from validator_service.settings import ValidatorSettings
from validator_service.upstream import ServiceAccount
from validator_service.users import UserDirectory
from validator_service.validation import Validation

SERVICE = "validator_service"
PREFIX = "/validate"


def create_app(settings: ValidatorSettings | None = None) -> Starlette:
    """The validator_service app (`uvicorn --factory validator_service.app:create_app`)."""
    settings = settings or load_settings(ValidatorSettings)
    account = ServiceAccount(settings)
    directory = PackageDirectory(settings, account)

    @asynccontextmanager
    async def lifespan(resources: Resources) -> AsyncIterator[None]:
        async with account.open(), Validation(settings).running(resources) as validation:
            app.state.validation = validation

            async def validation_listening() -> None:
                # Jobs still arrive by polling without it, but late: the service is degraded.
                worker = validation.worker
                if worker is None or not worker.listening:
                    raise ConnectionError("the validation worker is not listening")

            resources.checks["validation"] = validation_listening
            yield

    app = create_service_app(
        service=SERVICE,
        prefix=PREFIX,
        settings=settings,
        operations=operations(directory, UserDirectory(settings, account)),
        lifespan=lifespan,
        uses_queue=True,
        description="Access decisions, admission rules and content validation reports.",
    )
    return app
