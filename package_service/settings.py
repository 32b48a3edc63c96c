"""package_service settings (environment variables with the `DEPOT_` prefix)."""

from pydantic import Field

from common.settings import CommonSettings, S3Settings


class PackageSettings(CommonSettings, S3Settings):
    max_artifact_bytes: int = Field(
        default=10 * 1024**3, ge=1, le=5 * 1024**4, description="Largest artifact accepted, in bytes (S3: 5 TiB)."
    )
    regex_timeout_ms: int = Field(default=1000, ge=1, le=30_000, description="Time a search regex may take.")
