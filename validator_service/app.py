"""validator_service: access decisions, admission rules and content validation, under `/validate`."""

from starlette.applications import Starlette

from common.app import create_service_app
from common.settings import load_settings
from validator_service.settings import ValidatorSettings

SERVICE = "validator_service"
PREFIX = "/validate"


def create_app(settings: ValidatorSettings | None = None) -> Starlette:
    """The validator_service app (`uvicorn --factory validator_service.app:create_app`)."""
    return create_service_app(
        service=SERVICE,
        prefix=PREFIX,
        settings=settings or load_settings(ValidatorSettings),
        uses_queue=True,
        description="Access decisions, admission rules and content validation reports.",
    )
