"""web_service settings (environment variables with the `DEPOT_` prefix).

web_service owns no data: it needs where the three APIs answer, the key that signs and encrypts
its session cookies, and the URL its users reach (an https one makes the cookie `Secure`).
"""

from __future__ import annotations

import secrets
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_SESSION_KEY_CHARS = 32


def _base_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc or parts.query or parts.fragment:
        raise ValueError("must be an http(s) URL without query or fragment")
    return value.rstrip("/")


class WebSettings(BaseSettings):
    """Where the APIs are, the session key, the public URL; validated before the first request."""

    model_config = SettingsConfigDict(env_prefix="DEPOT_", extra="ignore", frozen=True)

    environment: Literal["development", "production"] = "development"
    log_format: Literal["json", "console"] | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    api_url: str | None = Field(
        default=None,
        description="One base URL where all three APIs answer (the load balancer); the three below override it.",
    )
    auth_url: str | None = Field(default=None, description="Base URL where auth_service answers `/auth/...`.")
    packages_url: str | None = Field(default=None, description="Base URL where package_service answers.")
    validate_url: str | None = Field(default=None, description="Base URL where validator_service answers.")
    public_url: str = Field(
        default="http://127.0.0.1:8080",
        description="The URL users reach the web pages at; https makes the session cookie `Secure` and `__Host-`.",
    )
    session_key: SecretStr | None = Field(
        default=None,
        description=f"At least {MIN_SESSION_KEY_CHARS} characters that sign and encrypt session cookies "
        "(required in production; in development a random one is made, and sessions end with the process).",
    )
    upstream_timeout_seconds: float = Field(default=10.0, gt=0, le=120, description="Longest wait for an API.")
    page_size: int = Field(default=20, ge=1, le=100, description="Items on one page of a list.")

    @field_validator("api_url", "auth_url", "packages_url", "validate_url", "public_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        return _base_url(value)

    @model_validator(mode="after")
    def _complete(self) -> Self:
        for name in ("auth_url", "packages_url", "validate_url"):
            if getattr(self, name) is None:
                if self.api_url is None:
                    raise ValueError(f"set DEPOT_API_URL, or DEPOT_{name.upper()}")
                object.__setattr__(self, name, self.api_url)
        if self.session_key is None:
            if self.environment == "production":
                raise ValueError("DEPOT_SESSION_KEY is required in production")
            object.__setattr__(self, "session_key", SecretStr(secrets.token_urlsafe(48)))
        elif len(self.session_key.get_secret_value()) < MIN_SESSION_KEY_CHARS:
            raise ValueError(f"DEPOT_SESSION_KEY must have at least {MIN_SESSION_KEY_CHARS} characters")
        return self

    @property
    def secure_cookies(self) -> bool:
        """Cookies only over TLS when users reach the pages over TLS."""
        return self.public_url.startswith("https://")

    @property
    def effective_log_format(self) -> Literal["json", "console"]:
        if self.log_format is not None:
            return self.log_format
        return "json" if self.environment == "production" else "console"

    def upstream(self, service: Literal["auth", "packages", "validate"]) -> str:
        """The base URL of one API."""
        url = {"auth": self.auth_url, "packages": self.packages_url, "validate": self.validate_url}[service]
        assert url is not None  # filled in by the validator above
        return url
