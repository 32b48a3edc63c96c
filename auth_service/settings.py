"""auth_service settings (environment variables with the `DEPOT_` prefix)."""

from pydantic import SecretStr

from common.settings import CommonSettings


class AuthSettings(CommonSettings):
    admin_username: str | None = None
    admin_password: SecretStr | None = None
