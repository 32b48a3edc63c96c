"""Whether a username names a user: package_service keeps no users, so it asks auth_service.

Only admins may move a package to another owner (API.md section 3), and the new owner must be an
existing user. The check is `GET /auth/users/{username}` made with that admin's own access token:
auth_service lets admins read any user, so package_service needs no credential of its own for it
(a service token would have to be provisioned, rotated and guarded for this one question, and the
admin is the one asking anyway). auth_service is found at `DEPOT_AUTH_URL`, or, unset, where
`DEPOT_AUTH_JWKS_URL` points (the JWKS is at `/auth/.well-known/jwks.json`), so a deployment whose
package_service already fetches its keys from auth_service needs nothing more.

An unknown user (a deleted one included) is a `400` naming the field; auth_service unreachable,
not configured, or answering anything else is a `503`: the owner stays unchanged either way.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import structlog
from pydantic import BaseModel, ValidationError

from common.errors import ServiceUnavailable, ValidationFailed
from common.http import service_client
from package_service.settings import PackageSettings

log = structlog.get_logger(__name__)

JWKS_PATH = "/auth/.well-known/jwks.json"
TIMEOUT_SECONDS = 5.0


class _User(BaseModel):
    """What this service reads of auth_service's User."""

    username: str


def auth_base_url(settings: PackageSettings) -> str | None:
    """Where auth_service answers `/auth/...`: `auth_url`, else the origin of the JWKS URL."""
    if settings.auth_url is not None:
        return settings.auth_url.rstrip("/")
    jwks = settings.auth_jwks_url
    if jwks is not None and jwks.endswith(JWKS_PATH):
        return jwks.removesuffix(JWKS_PATH)
    return None


class UserDirectory:
    """Asks auth_service whether users exist (a connection per question: owners change rarely)."""

    def __init__(self, settings: PackageSettings) -> None:
        self._base_url = auth_base_url(settings)

    async def existing_username(self, username: str, token: str) -> str:
        """`username` as auth_service spells it, if such a user exists; asked with the caller's `token`."""
        if self._base_url is None:
            raise ServiceUnavailable("auth_service is not configured (DEPOT_AUTH_URL or DEPOT_AUTH_JWKS_URL).")
        url = f"{self._base_url}/auth/users/{quote(username, safe='')}"
        try:
            async with service_client(timeout=TIMEOUT_SECONDS) as client:
                response = await client.get(url, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as error:
            log.warning("auth_service_unreachable", error_type=type(error).__name__)
            raise ServiceUnavailable("auth_service is unreachable: the owner cannot be checked.") from error
        if response.status_code == httpx.codes.NOT_FOUND:
            raise ValidationFailed(
                [{"loc": ["body", "owner"], "msg": "No such user."}], detail=f"There is no user named {username!r}."
            )
        if response.status_code != httpx.codes.OK:
            log.warning("auth_service_refused_user_lookup", status=response.status_code)
            raise ServiceUnavailable("auth_service did not answer whether the owner exists.")
        try:
            found = _User.model_validate_json(response.content).username
        except ValidationError:
            log.error("auth_service_answer_invalid")  # noqa: TRY400 - the fields are auth_service's; no trace needed
            raise ServiceUnavailable("auth_service's answer about the owner was malformed.") from None
        if found.lower() != username.lower():
            log.error("auth_service_answered_another_user")
            raise ServiceUnavailable("auth_service's answer about the owner was malformed.")
        return found.lower()
