"""package_service settings (environment variables with the `DEPOT_` prefix)."""

from pydantic import Field

from common.settings import CommonSettings, S3Settings


class PackageSettings(CommonSettings, S3Settings):
    max_artifact_bytes: int = Field(default=10 * 1024**3, ge=1, description="Largest artifact accepted, in bytes.")
