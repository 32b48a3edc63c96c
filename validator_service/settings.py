"""validator_service settings (environment variables with the `DEPOT_` prefix)."""

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr

from common.settings import CommonSettings, S3Settings


class ValidatorSettings(CommonSettings, S3Settings):
    """The validator reads artifacts from S3 (read only), jobs from the queue, access lists from package_service
    and users from auth_service."""

    packages_url: str | None = Field(
        default=None,
        description="Base URL where package_service answers `/packages/...` (on AWS: the internal load balancer).",
    )
    auth_url: str | None = Field(
        default=None,
        description="Base URL where auth_service answers `/auth/...`: to exchange the service token, and read users.",
    )
    service_token: SecretStr | None = Field(
        default=None, description="API token of a `service`-role account, for calls to package_service."
    )
    service_token_file: Path | None = Field(
        default=None, description="File holding that token instead (read at each exchange, so it may rotate)."
    )
    access_cache_seconds: float = Field(
        default=2.0,
        ge=0,
        le=10,
        description="Seconds a package's access list, or a user's groups, is reused before it is read again.",
    )
    validation_workers: int = Field(default=2, ge=1, le=32, description="Artifacts validated at once by each process.")
    validation_lease_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="A job whose worker stops heartbeating is taken over after this."
    )
    validation_poll_seconds: float = Field(
        default=5.0, gt=0, le=300, description="Seconds between looks at the queue when no notification arrives."
    )
    queue_metrics_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="Seconds between two queue depth metrics (CloudWatch EMF log lines)."
    )
    ecs_agent_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("ECS_AGENT_URI", "ecs_agent_uri"),
        description="The ECS agent's endpoint (ECS sets `ECS_AGENT_URI` in every container): with it, a task "
        "holds scale-in protection while it validates.",
    )
    scale_in_protection_minutes: int = Field(
        default=10, ge=1, le=2880, description="Minutes each grant of scale-in protection lasts (renewed while busy)."
    )
    scale_in_protection_max_minutes: float = Field(
        default=30, gt=0, le=2880,
        description="A task busy without a break for this long lets protection go, so that a deployment can proceed.",
    )  # fmt: skip
