"""Typed settings from the environment (`DEPOT_` prefix), validated before the first request."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path
from typing import Literal, Self, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

DEFAULT_DATABASE_URL = "postgresql+asyncpg://depot@127.0.0.1:5432/depot"


class CommonSettings(BaseSettings):
    """What every service reads. Each service extends it with its own fields."""

    model_config = SettingsConfigDict(env_prefix="DEPOT_", extra="ignore", frozen=True)

    environment: Literal["development", "production"] = "development"
    log_format: Literal["json", "console"] | None = Field(
        default=None, description="Log line format; JSON in production and console in development by default."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    database_url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    database_password: SecretStr | None = Field(
        default=None,
        description="The database password, kept apart from the URL (on AWS: a key of the RDS secret); "
        "when set, it replaces the URL's password.",
    )
    database_ssl_root_cert: Path | None = Field(
        default=None,
        description="PEM bundle of the certificate authorities that sign the database server's certificate. When "
        "set, every connection uses TLS and checks the certificate and the host name (libpq's verify-full); on AWS, "
        "the RDS bundle that the image carries. Unset: the driver's default (TLS when offered, unverified).",
    )
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_max_overflow: int = Field(default=5, ge=0, le=200)
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    db_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    db_statement_timeout_ms: int = Field(
        default=10_000, ge=100, le=600_000,
        description="Longest statement, ended by PostgreSQL; the client gives up 2 s later (a frozen server).",
    )  # fmt: skip
    request_timeout_seconds: float = Field(
        default=15.0, gt=0, le=300,
        description="Longest a request that moves no artifact bytes may take before it is answered 503.",
    )  # fmt: skip

    ready_check_timeout_seconds: float = Field(default=2.0, gt=0, le=30)

    jwt_issuer: str = Field(default="depot", min_length=1, description="`iss` of access tokens.")
    auth_jwks_url: str | None = Field(
        default=None, description="auth_service's JWKS URL, where the other services fetch verification keys."
    )
    auth_public_keys: str | None = Field(
        default=None, description="PEM public keys that verify access tokens, in addition to the JWKS."
    )

    @field_validator("database_url")
    @classmethod
    def _asyncpg_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return SecretStr("postgresql+asyncpg://" + url.removeprefix(prefix))
        raise ValueError("must be a postgresql:// URL")

    @field_validator("database_ssl_root_cert", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("database_ssl_root_cert")
    @classmethod
    def _readable_ca_bundle(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                ssl.create_default_context(cafile=value)
            except (OSError, ssl.SSLError) as error:
                raise ValueError(f"not a readable PEM bundle of CA certificates ({error})") from None
        return value

    @model_validator(mode="after")
    def _password_into_url(self) -> Self:
        if self.database_password is None:
            return self
        url = make_url(self.database_url.get_secret_value()).set(password=self.database_password.get_secret_value())
        object.__setattr__(self, "database_url", SecretStr(url.render_as_string(hide_password=False)))
        return self

    @property
    def effective_log_format(self) -> Literal["json", "console"]:
        if self.log_format is not None:
            return self.log_format
        return "json" if self.environment == "production" else "console"


class S3Settings(BaseSettings):
    """Where the artifacts live. Without an endpoint, AWS S3 and the default credential chain are used."""

    model_config = SettingsConfigDict(env_prefix="DEPOT_", extra="ignore", frozen=True)

    s3_bucket: str = Field(default="depot", min_length=3, max_length=63)
    s3_region: str = "us-east-1"
    s3_endpoint_url: str | None = Field(default=None, description="S3 endpoint the services use (unset: AWS).")
    s3_public_url: str | None = Field(
        default=None, description="S3 endpoint that clients reach, for presigned URLs (unset: the endpoint)."
    )
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load_settings(cls: type[SettingsT]) -> SettingsT:
    """Read settings, or stop the process with one clear line per invalid variable."""
    try:
        return cls()
    except ValidationError as error:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = [f"  {prefix}{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors()]
        sys.stderr.write("Invalid configuration:\n" + "\n".join(lines) + "\n")
        raise SystemExit(2) from None
