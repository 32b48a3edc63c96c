"""auth_service settings (environment variables with the `DEPOT_` prefix)."""

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from common.settings import CommonSettings


class AuthSettings(CommonSettings):
    admin_username: str | None = None
    admin_password: SecretStr | None = None
    registration_open: bool = True

    access_token_ttl_seconds: int = Field(default=900, ge=60, le=86_400)
    refresh_token_ttl_seconds: int = Field(default=30 * 86_400, ge=300, le=365 * 86_400)

    signing_key: SecretStr | None = Field(default=None, description="PEM private key (Ed25519, P-256 or RSA).")
    signing_key_file: Path | None = Field(default=None, description="File holding the PEM private key.")
    previous_public_keys: str | None = Field(
        default=None, description="PEM public keys of retired signing keys, still published until their tokens expire."
    )
    data_dir: Path = Field(default=Path(".depot"), description="Where a development signing key is generated.")

    # argon2id cost; the defaults are RFC 9106's second recommendation (64 MiB, 3 passes).
    argon2_time_cost: int = Field(default=3, ge=1, le=20)
    argon2_memory_kib: int = Field(default=65_536, ge=8, le=4 * 1024 * 1024)
    argon2_parallelism: int = Field(default=2, ge=1, le=16)
    password_hash_threads: int = Field(default=2, ge=1, le=64)

    @field_validator("admin_username", "admin_password", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `docker compose` passes an unset variable through as an empty string.
        return None if value == "" else value

    @model_validator(mode="after")
    def _production_needs_a_key(self) -> "AuthSettings":
        if self.environment == "production" and self.signing_key is None and self.signing_key_file is None:
            raise ValueError("production needs DEPOT_SIGNING_KEY or DEPOT_SIGNING_KEY_FILE")
        if (self.admin_username is None) != (self.admin_password is None):
            raise ValueError("set both DEPOT_ADMIN_USERNAME and DEPOT_ADMIN_PASSWORD, or neither")
        return self
