"""package_service settings (environment variables with the `DEPOT_` prefix)."""

from pydantic import Field

from common.settings import CommonSettings, S3Settings


class PackageSettings(CommonSettings, S3Settings):
    max_artifact_bytes: int = Field(
        default=10 * 1024**3, ge=1, le=5 * 1024**4, description="Largest artifact accepted, in bytes (S3: 5 TiB)."
    )
    regex_timeout_ms: int = Field(default=1000, ge=1, le=30_000, description="Time a search regex may take.")
    auth_url: str | None = Field(
        default=None,
        description="Base URL where auth_service answers `/auth/...`, to check that a package's new owner exists "
        "(unset: taken from `auth_jwks_url`).",
    )
    upload_expiry_hours: int = Field(
        default=24, ge=1, le=24 * 30, description="Hours a presigned upload stays open before it is aborted."
    )

    # Workers (package_service/workers.py): verdicts, re-queued validations, the janitor.
    verdict_worker_concurrency: int = Field(
        default=2, ge=1, le=50, description="Verdicts applied at once by each process."
    )
    sweep_interval_seconds: float = Field(
        default=60.0, gt=0, le=24 * 3600, description="Seconds between two background sweeps."
    )
    sweep_batch_size: int = Field(
        default=500, ge=1, le=10_000, description="Most versions re-queued, and most orphans deleted, per sweep."
    )
    pending_requeue_after_seconds: float = Field(
        default=300.0, ge=0, description="A version pending this long, with no validation under way, is queued again."
    )
    orphan_grace_seconds: float = Field(
        default=3600.0, ge=0, description="Age before an orphan's bytes are deleted (younger: maybe still uploading)."
    )
    stale_multipart_upload_seconds: float | None = Field(
        default=None,
        ge=0,
        description="Age after which open multipart uploads under `versions/` are aborted "
        "(unset: `upload_expiry_hours` plus one hour).",
    )
    untracked_multipart_grace_seconds: float = Field(
        default=900.0,
        ge=0,
        le=3600,
        description="Age after which a multipart upload under `versions/` that no open upload and no upload in "
        "progress accounts for is aborted (younger: maybe an upload being started).",
    )
    done_job_retention_days: float = Field(
        default=7.0, gt=0, description="Days finished (`done`) queue jobs are kept before being purged."
    )
