"""validator_service settings (environment variables with the `DEPOT_` prefix)."""

from common.settings import CommonSettings, S3Settings


class ValidatorSettings(CommonSettings, S3Settings):
    """The validator reads artifacts from S3 (read only) and jobs from the queue."""
